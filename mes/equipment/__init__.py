"""Plant model: the ISA-95 equipment hierarchy, equipment classes, status and qualification."""
