_where = f"pipeline {pipeline.spec.source}" if pipeline else f"back-end {publisher.address}"
print(f"bluesky_ptycho: catalog at {catalog.location}; {_where}; "
      "RE(ptycho_scan(fccd, stage, shutter, num_points=400))")
