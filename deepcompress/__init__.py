"""deepcompress, the application: the ``deepcompress`` command and the workflows on top of the
four packages (``compression``, ``android_export``, ``ios_export``, ``device_harness``).

This is the only package that wires the others together: a command loads a recipe or a ``.dcz``,
builds the model from the zoo or the user's own factory, hands it to an exporter or a device, and
reports. Nothing below imports from here.
"""
__version__ = "0.2.0"
