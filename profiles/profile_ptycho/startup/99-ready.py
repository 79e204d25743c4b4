print(f"bluesky_ptycho: catalog at {catalog.location}; pipeline {pipeline.spec.source}; "
      "RE(ptycho_scan(fccd, stage, shutter, num_points=400))")
