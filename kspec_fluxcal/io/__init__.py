"""Reading and writing: KSPEC RED frames, FITS units as written in the wild, atomic file output."""
