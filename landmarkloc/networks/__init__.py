"""Neural networks (FCN global/local, Pnet): one code path for 2D and 3D."""
