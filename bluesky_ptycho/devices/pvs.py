"""The beamline's default PV names (no ophyd here: the soft IOC shares them).

Change them in the profile's configuration (profiles/profile_ptycho/startup/20-devices.py)
or on ``bluesky-ptycho ioc``'s command line.
"""

FCCD_PREFIX = "PTYCHO:FCCD:"  # the camera is FCCD_PREFIX + "cam1:", its HDF5 plugin + "HDF1:"
STAGE_X_PV = "PTYCHO:STAGE:X"  # motor records
STAGE_Y_PV = "PTYCHO:STAGE:Y"
SHUTTER_PV = "PTYCHO:SHUTTER"  # its readback: SHUTTER_PV + "_RBV"
