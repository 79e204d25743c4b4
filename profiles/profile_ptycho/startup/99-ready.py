_where = f"pipeline {pipeline.spec.source}" if pipeline else f"back-end {publisher.address}"
print(
    f"bluesky_ptycho: catalog at {catalog.location}; {_where}; "
    "RE(ptycho_scan(fccd, stage, shutter, num_points=400, rescan=rescan)); "
    "live view: `napari` → Plugins → Live ptychography, or live_view()"
)


def live_view():
    """Open napari with the live dock widget following this session's pipeline (or back-end).
    Run `%gui qt` first in a terminal IPython; the scan keeps the viewer live as it runs."""
    import matplotlib
    import napari

    from bluesky_ptycho.viewer.widget import LiveView

    matplotlib.use("QtAgg")  # the RunEngine spins Qt's event loop while it waits
    viewer = napari.Viewer()
    if pipeline is not None:
        widget = LiveView(viewer, pipeline=pipeline)
    else:
        widget = LiveView(viewer, results=results.address)
    viewer.window.add_dock_widget(widget, name="Live ptychography")
    return viewer
