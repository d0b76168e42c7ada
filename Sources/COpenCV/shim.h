// OpenCV's core, imgproc and imgcodecs libraries, for the COCRVision shim (which includes their C++ headers from
// /usr/include/opencv4 itself). Nothing is imported into Swift from here: this module only names the libraries to
// link. Debian's opencv4.pc comes only with the whole libopencv-dev, so the libraries are listed here instead.
