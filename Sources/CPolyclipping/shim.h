// Clipper (Debian: libpolyclipping-dev), the polygon offsetting rapidocr uses through pyclipper, for the COCRVision
// shim (which includes <clipper.hpp> through pkg-config's include path). Nothing is imported into Swift from here.
