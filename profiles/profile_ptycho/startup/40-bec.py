# The usual table of readings while a scan runs (plots off: the napari viewer shows images).
# The table prints each reading to its data key's precision (the stage: µm, 3 decimals, from
# the motor's EGU and PREC); its column heads are the bare keys, so a line above says the units.
from bluesky.callbacks.best_effort import BestEffortCallback


def units_line(name, doc):
    """Before the table of a stream, print the units of the columns that have some."""
    if name != "descriptor" or doc.get("name") != "primary":
        return
    hinted = [f for h in doc.get("hints", {}).values() for f in h.get("fields", [])]
    keys = doc["data_keys"]
    units = [f"{k} [{keys[k]['units']}]" for k in hinted if k in keys and keys[k].get("units")]
    if units:
        print("Units: " + ", ".join(units))


RE.subscribe(units_line)  # before the table: the line comes above it
bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
