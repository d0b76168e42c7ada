// The image steps of PP-OCR as rapidocr_onnxruntime does them with OpenCV and pyclipper, behind a C API.
//
// The implementation (Sources/COCRVision/COCRVision.cpp, over OpenCV core, imgproc, imgcodecs and Clipper) is the
// shared library libKernelOCRVision.so; Swift imports this header as the module COCRVisionAPI for its types and
// calls the functions through dlsym (Modules/Inference/Pipeline/OCRVisionLibrary.swift), so that only a
// configuration with pipelines loads OpenCV. Every function catches OpenCV's exceptions and answers a status: none throws or aborts. Parameter names
// follow rapidocr's (config.yaml of rapidocr_onnxruntime), the file and function of rapidocr each step mirrors is
// named at the function.
#ifndef COCR_VISION_H
#define COCR_VISION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A decoded 8-bit BGR image (OpenCV's cv::Mat), owned by the caller: release it with `cocr_image_free`.
typedef struct cocr_image cocr_image;

/// What an image call answers.
typedef enum {
    COCR_OK = 0,
    /// The bytes are not an image of a supported format (JPEG, PNG, BMP, WebP).
    COCR_NOT_AN_IMAGE = 1,
    /// The header says the image has no pixels (a zero width or height).
    COCR_EMPTY_IMAGE = 2,
    /// Width times height is above the caller's limit: nothing was decoded.
    COCR_TOO_MANY_PIXELS = 3,
    /// The image data ends early or is corrupt.
    COCR_CORRUPT = 4,
    /// OpenCV failed (out of memory, an internal error).
    COCR_FAILED = 5,
} cocr_status;

/// Image formats told by their first bytes.
typedef enum {
    COCR_FORMAT_UNKNOWN = 0,
    COCR_FORMAT_JPEG = 1,
    COCR_FORMAT_PNG = 2,
    COCR_FORMAT_BMP = 3,
    COCR_FORMAT_WEBP = 4,
} cocr_format;

/// Sets the threads OpenCV's own parallel loops use (the kernel runs these steps on its own thread pool: 1).
void cocr_set_threads(int threads);

/// Reads format, width and height from the header bytes alone (no pixel is decoded, nothing large allocated).
cocr_status cocr_probe(const uint8_t *data, size_t length, cocr_format *format, int64_t *width, int64_t *height);

/// Decodes an image after probing it: refused with COCR_TOO_MANY_PIXELS before decoding when its header declares more
/// than `max_pixels` pixels. Gray and alpha images become BGR as rapidocr's LoadImage converts them.
cocr_status cocr_decode(const uint8_t *data, size_t length, int64_t max_pixels, cocr_image **image);

void cocr_image_free(cocr_image *image);
int cocr_image_width(const cocr_image *image);
int cocr_image_height(const cocr_image *image);
/// Copies the BGR pixels (height * width * 3 bytes, row-major) into `out`: for tests.
void cocr_image_copy_pixels(const cocr_image *image, uint8_t *out);
/// An image from BGR pixels (height * width * 3 bytes): for tests; NULL when it cannot be made.
cocr_image *cocr_image_from_pixels(const uint8_t *pixels, int width, int height);

/// How `cocr_prepare` changed the image, to map boxes back (rapidocr's op_record).
typedef struct {
    double ratio_h;
    double ratio_w;
    int pad_top;
} cocr_geometry;

/// RapidOCR.preprocess (reduce_max_side to `max_side_len`, increase_min_side to `min_side_len`) then
/// RapidOCR.maybe_add_letterbox (`min_height`, `width_height_ratio`; -1 turns the ratio rule off) into `prepared`.
/// COCR_TOO_MANY_PIXELS, before any allocation, when an image it would make has more than `max_pixels` pixels
/// (a thin strip scaled up to `min_side_len` and letterboxed grows by orders of magnitude).
cocr_status cocr_prepare(const cocr_image *image, int max_side_len, int min_side_len, int min_height,
                         double width_height_ratio, int64_t max_pixels, cocr_image **prepared, cocr_geometry *geometry);

/// DetPreProcess.resize's size: the image scaled by `limit_side_len` (`limit_type_max`: 1 for "max", 0 for "min") and
/// rounded to multiples of 32. Answers 0 when a side would be 0 (rapidocr then finds no text).
int cocr_det_input_size(int height, int width, int limit_side_len, int limit_type_max, int *out_height, int *out_width);

/// DetPreProcess: resize to `height` x `width`, (pixel / 255 - mean) / std per BGR channel, HWC to CHW into `out`
/// (3 * height * width floats).
cocr_status cocr_det_preprocess(const cocr_image *image, int height, int width, const double mean[3],
                                const double std[3], float *out);

/// DBPostProcess's parameters.
typedef struct {
    double thresh;
    double box_thresh;
    int max_candidates;
    double unclip_ratio;
    int use_dilation;
    /// 0: "fast" (score inside the min-area box), 1: "slow" (inside the contour).
    int score_mode_slow;
} cocr_db_params;

/// DBPostProcess then TextDetector.filter_tag_det_res: boxes found in the probability map `pred` (`pred_height` x
/// `pred_width`) scaled to the `src_height` x `src_width` image, each as four points (8 floats: top-left,
/// top-right, bottom-right, bottom-left) in `boxes`, at most `capacity` boxes. Answers the count, or -1 on failure.
int cocr_db_postprocess(const float *pred, int pred_height, int pred_width, int src_height, int src_width,
                        const cocr_db_params *params, float *boxes, int capacity);

/// RapidOCR.get_crop_img_list's get_rotate_crop_image: the quadrilateral `points` (8 floats) warped upright,
/// turned a quarter counter-clockwise when it is at least 1.5 times taller than wide. NULL on failure.
cocr_image *cocr_crop(const cocr_image *image, const float points[8]);

/// cv2.rotate(image, ROTATE_180) (TextClassifier's flip) as a new image; NULL on failure.
cocr_image *cocr_rotated180(const cocr_image *image);

/// TextClassifier.resize_norm_img / TextRecognizer.resize_norm_img: resize to `height` keeping the ratio (at most
/// `width` wide), (pixel / 255 - 0.5) / 0.5, CHW, zero-padded on the right to `width`, into `out` (3 * height * width
/// floats).
cocr_status cocr_resize_normalize(const cocr_image *image, int height, int width, float *out);

#ifdef __cplusplus
}
#endif

#endif
