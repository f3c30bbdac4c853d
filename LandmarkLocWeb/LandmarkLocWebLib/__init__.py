"""``landmarkloc web``: the Landmark Localizer and RPR One-Shot logic in a browser, over trame-slicer."""
