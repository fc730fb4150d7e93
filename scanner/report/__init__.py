"""Pure renderers: a ScanReport in, text (or a rich renderable) out; nothing here prints."""
