// The image steps of PP-OCR with OpenCV and Clipper, mirroring rapidocr_onnxruntime step by step (see COCRVision.h).
// Where rapidocr computes in float32 (NumPy arrays of float32 with Python scalars) this does too, and in double
// where it promotes to float64, so boxes and inputs come out bit for bit the same.
#include "COCRVision.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <clipper.hpp>

struct cocr_image {
    cv::Mat mat;
};

namespace {

uint32_t be16(const uint8_t *p) { return (uint32_t(p[0]) << 8) | p[1]; }
uint32_t be32(const uint8_t *p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }
uint32_t le16(const uint8_t *p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8); }
uint32_t le24(const uint8_t *p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16); }
uint32_t le32(const uint8_t *p) { return le24(p) | (uint32_t(p[3]) << 24); }

/// The JPEG frame header (SOFn) gives the size; markers are walked by their lengths, never past the data.
/// `scan` receives the offset of the first scan's data (after SOS), where the end-of-image check starts, or 0.
cocr_status probe_jpeg(const uint8_t *d, size_t n, int64_t *w, int64_t *h, size_t *scan) {
    size_t i = 2;
    bool sized = false;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) return COCR_CORRUPT;
        uint8_t marker = d[i + 1];
        if (marker == 0xFF) { i += 1; continue; }  // fill byte
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }
        if (marker == 0xD9) return COCR_CORRUPT;  // end of image before any scan
        size_t length = be16(d + i + 2);
        if (length < 2) return COCR_CORRUPT;
        bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
        if (frame) {
            if (length < 7 || i + 9 > n) return COCR_CORRUPT;
            *h = be16(d + i + 5);
            *w = be16(d + i + 7);
            sized = true;
        }
        if (marker == 0xDA) {
            if (!sized) return COCR_CORRUPT;
            *scan = i + 2 + length;
            return *scan <= n ? COCR_OK : COCR_CORRUPT;
        }
        i += 2 + length;
    }
    // The size is known once the frame header is read; without a scan the data is cut short (`scan` stays 0).
    return sized ? COCR_OK : COCR_CORRUPT;
}

cocr_status probe(const uint8_t *d, size_t n, cocr_format *format, int64_t *w, int64_t *h, size_t *scan) {
    *format = COCR_FORMAT_UNKNOWN;
    *w = 0;
    *h = 0;
    *scan = 0;
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) {
        *format = COCR_FORMAT_JPEG;
        return probe_jpeg(d, n, w, h, scan);
    }
    static const uint8_t png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (n >= 8 && std::memcmp(d, png, 8) == 0) {
        *format = COCR_FORMAT_PNG;
        if (n < 24 || std::memcmp(d + 12, "IHDR", 4) != 0) return COCR_CORRUPT;
        *w = be32(d + 16);
        *h = be32(d + 20);
        return COCR_OK;
    }
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') {
        *format = COCR_FORMAT_BMP;
        if (n < 26) return COCR_CORRUPT;
        uint32_t header = le32(d + 14);
        if (header == 12) {
            *w = le16(d + 18);
            *h = le16(d + 20);
        } else {
            if (header < 40) return COCR_CORRUPT;
            *w = int32_t(le32(d + 18));
            *h = int32_t(le32(d + 22));
            if (*h < 0) *h = -*h;  // top-down rows
            if (*w < 0) return COCR_CORRUPT;
        }
        return COCR_OK;
    }
    if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) {
        *format = COCR_FORMAT_WEBP;
        if (n < 30) return COCR_CORRUPT;
        if (std::memcmp(d + 12, "VP8 ", 4) == 0) {
            if (d[23] != 0x9D || d[24] != 0x01 || d[25] != 0x2A) return COCR_CORRUPT;
            *w = le16(d + 26) & 0x3FFF;
            *h = le16(d + 28) & 0x3FFF;
        } else if (std::memcmp(d + 12, "VP8L", 4) == 0) {
            if (d[20] != 0x2F) return COCR_CORRUPT;
            uint32_t bits = le32(d + 21);
            *w = (bits & 0x3FFF) + 1;
            *h = ((bits >> 14) & 0x3FFF) + 1;
        } else if (std::memcmp(d + 12, "VP8X", 4) == 0) {
            *w = int64_t(le24(d + 24)) + 1;
            *h = int64_t(le24(d + 27)) + 1;
        } else {
            return COCR_CORRUPT;
        }
        return COCR_OK;
    }
    return COCR_NOT_AN_IMAGE;
}

/// LoadImage.cvt_four_to_three: what rapidocr makes of an image with alpha (OpenCV gives BGRA where PIL gives RGBA).
cv::Mat four_to_three(const cv::Mat &bgra) {
    std::vector<cv::Mat> planes;
    cv::split(bgra, planes);
    cv::Mat bgr;
    cv::merge(std::vector<cv::Mat>{planes[0], planes[1], planes[2]}, bgr);
    cv::Mat not_a;
    cv::bitwise_not(planes[3], not_a);
    cv::cvtColor(not_a, not_a, cv::COLOR_GRAY2BGR);
    cv::Mat masked;
    cv::bitwise_and(bgr, bgr, masked, planes[3]);
    cv::Scalar mean = cv::mean(masked);
    double mean_color = (mean[0] + mean[1] + mean[2]) / 3.0;
    cv::Mat result;
    if (mean_color <= 0.0) {
        cv::add(masked, not_a, result);
    } else {
        cv::bitwise_not(masked, result);
    }
    return result;
}

/// DBPostProcess.get_mini_boxes: the min-area rectangle's corners ordered from its left side, and its short side.
void mini_box(const std::vector<cv::Point> &contour, cv::Point2f out[4], float *short_side) {
    cv::RotatedRect rect = cv::minAreaRect(contour);
    cv::Point2f corners[4];
    rect.points(corners);
    std::vector<cv::Point2f> points(corners, corners + 4);
    // Python's sorted() is stable.
    std::stable_sort(points.begin(), points.end(), [](const cv::Point2f &a, const cv::Point2f &b) { return a.x < b.x; });
    int i1, i2, i3, i4;
    if (points[1].y > points[0].y) { i1 = 0; i4 = 1; } else { i1 = 1; i4 = 0; }
    if (points[3].y > points[2].y) { i2 = 2; i3 = 3; } else { i2 = 3; i3 = 2; }
    out[0] = points[i1];
    out[1] = points[i2];
    out[2] = points[i3];
    out[3] = points[i4];
    *short_side = std::min(rect.size.width, rect.size.height);
}

/// DBPostProcess.box_score_fast: the mean probability inside the box, over its bounding rectangle.
double box_score_fast(const cv::Mat &pred, const cv::Point2f box[4]) {
    int w = pred.cols, h = pred.rows;
    float minx = box[0].x, maxx = box[0].x, miny = box[0].y, maxy = box[0].y;
    for (int k = 1; k < 4; k++) {
        minx = std::min(minx, box[k].x); maxx = std::max(maxx, box[k].x);
        miny = std::min(miny, box[k].y); maxy = std::max(maxy, box[k].y);
    }
    int xmin = std::clamp(int(std::floor(minx)), 0, w - 1);
    int xmax = std::clamp(int(std::ceil(maxx)), 0, w - 1);
    int ymin = std::clamp(int(std::floor(miny)), 0, h - 1);
    int ymax = std::clamp(int(std::ceil(maxy)), 0, h - 1);
    cv::Mat mask = cv::Mat::zeros(ymax - ymin + 1, xmax - xmin + 1, CV_8UC1);
    std::vector<cv::Point> polygon;
    for (int k = 0; k < 4; k++) {
        // float minus integer is exact here; astype(np.int32) truncates toward zero.
        polygon.emplace_back(int(double(box[k].x) - xmin), int(double(box[k].y) - ymin));
    }
    std::vector<std::vector<cv::Point>> polygons{polygon};
    cv::fillPoly(mask, polygons, cv::Scalar(1));
    return cv::mean(pred(cv::Rect(xmin, ymin, xmax - xmin + 1, ymax - ymin + 1)), mask)[0];
}

/// DBPostProcess.box_score_slow: the mean probability inside the contour itself.
double box_score_slow(const cv::Mat &pred, const std::vector<cv::Point> &contour) {
    int w = pred.cols, h = pred.rows;
    int minx = contour[0].x, maxx = contour[0].x, miny = contour[0].y, maxy = contour[0].y;
    for (const auto &p : contour) {
        minx = std::min(minx, p.x); maxx = std::max(maxx, p.x);
        miny = std::min(miny, p.y); maxy = std::max(maxy, p.y);
    }
    int xmin = std::clamp(minx, 0, w - 1), xmax = std::clamp(maxx, 0, w - 1);
    int ymin = std::clamp(miny, 0, h - 1), ymax = std::clamp(maxy, 0, h - 1);
    cv::Mat mask = cv::Mat::zeros(ymax - ymin + 1, xmax - xmin + 1, CV_8UC1);
    std::vector<cv::Point> shifted;
    for (const auto &p : contour) shifted.emplace_back(p.x - xmin, p.y - ymin);
    std::vector<std::vector<cv::Point>> polygons{shifted};
    cv::fillPoly(mask, polygons, cv::Scalar(1));
    return cv::mean(pred(cv::Rect(xmin, ymin, xmax - xmin + 1, ymax - ymin + 1)), mask)[0];
}

/// DBPostProcess.unclip: the box grown by area * unclip_ratio / perimeter with Clipper's round offset (pyclipper's
/// defaults: miter limit 2, arc tolerance 0.25; its float coordinates truncated to integers as pyclipper does).
std::vector<cv::Point> unclip(const cv::Point2f box[4], double unclip_ratio) {
    double area = 0, length = 0;
    for (int k = 0; k < 4; k++) {
        double x0 = box[k].x, y0 = box[k].y, x1 = box[(k + 1) % 4].x, y1 = box[(k + 1) % 4].y;
        area += x0 * y1 - x1 * y0;
        length += std::sqrt((x1 - x0) * (x1 - x0) + (y1 - y0) * (y1 - y0));
    }
    area = std::fabs(area) / 2.0;
    std::vector<cv::Point> result;
    if (length <= 0) return result;
    double distance = area * unclip_ratio / length;
    ClipperLib::Path path;
    for (int k = 0; k < 4; k++) path.push_back(ClipperLib::IntPoint(ClipperLib::cInt(box[k].x), ClipperLib::cInt(box[k].y)));
    ClipperLib::ClipperOffset offset(2.0, 0.25);
    offset.AddPath(path, ClipperLib::jtRound, ClipperLib::etClosedPolygon);
    ClipperLib::Paths expanded;
    offset.Execute(expanded, distance);
    for (const auto &p : expanded) {
        for (const auto &q : p) result.emplace_back(int(q.X), int(q.Y));
    }
    return result;
}

/// TextDetector.order_points_clockwise: top-left, top-right, bottom-right, bottom-left (NumPy's argsort on four
/// values is an insertion sort, so stable).
void order_clockwise(cv::Point2f pts[4]) {
    std::vector<cv::Point2f> sorted(pts, pts + 4);
    std::stable_sort(sorted.begin(), sorted.end(), [](const cv::Point2f &a, const cv::Point2f &b) { return a.x < b.x; });
    cv::Point2f left[2] = {sorted[0], sorted[1]}, right[2] = {sorted[2], sorted[3]};
    if (left[1].y < left[0].y) std::swap(left[0], left[1]);
    if (right[1].y < right[0].y) std::swap(right[0], right[1]);
    pts[0] = left[0];
    pts[1] = right[0];
    pts[2] = right[1];
    pts[3] = left[1];
}

float norm2(const cv::Point2f &a, const cv::Point2f &b) {
    float dx = a.x - b.x, dy = a.y - b.y;
    return std::sqrt(dx * dx + dy * dy);
}

}  // namespace

extern "C" {

void cocr_set_threads(int threads) {
    try { cv::setNumThreads(threads); } catch (...) {}
}

cocr_status cocr_probe(const uint8_t *data, size_t length, cocr_format *format, int64_t *width, int64_t *height) {
    size_t scan;
    return probe(data, length, format, width, height, &scan);
}

cocr_status cocr_decode(const uint8_t *data, size_t length, int64_t max_pixels, cocr_image **image) {
    *image = nullptr;
    cocr_format format;
    int64_t w, h;
    size_t scan;
    cocr_status status = probe(data, length, &format, &w, &h, &scan);
    if (status != COCR_OK) return status;
    if (w <= 0 || h <= 0) return COCR_EMPTY_IMAGE;
    if (w > max_pixels || h > max_pixels || w * h > max_pixels) return COCR_TOO_MANY_PIXELS;
    if (format == COCR_FORMAT_JPEG) {
        if (scan == 0) return COCR_CORRUPT;
        // libjpeg fills a truncated scan with gray and only warns; PIL (rapidocr's loader) refuses it. A complete
        // JPEG has its end-of-image marker after the scan data.
        bool ended = false;
        for (size_t i = length; i >= scan + 2 && i >= 2; i--) {
            if (data[i - 2] == 0xFF && data[i - 1] == 0xD9) { ended = true; break; }
        }
        if (!ended) return COCR_CORRUPT;
    }
    try {
        cv::Mat buffer(1, int(length), CV_8UC1, const_cast<uint8_t *>(data));
        cv::Mat decoded = cv::imdecode(buffer, cv::IMREAD_UNCHANGED);
        if (decoded.empty()) return COCR_CORRUPT;
        if (decoded.cols != w || decoded.rows != h) return COCR_CORRUPT;
        if (decoded.depth() == CV_16U) {
            decoded.convertTo(decoded, CV_8U, 1.0 / 256.0);
        } else if (decoded.depth() != CV_8U) {
            return COCR_CORRUPT;
        }
        cv::Mat bgr;
        switch (decoded.channels()) {
        case 1: cv::cvtColor(decoded, bgr, cv::COLOR_GRAY2BGR); break;
        case 3: bgr = decoded; break;
        case 4: bgr = four_to_three(decoded); break;
        default: return COCR_CORRUPT;
        }
        *image = new cocr_image{bgr};
        return COCR_OK;
    } catch (const cv::Exception &) {
        return COCR_CORRUPT;
    } catch (...) {
        return COCR_FAILED;
    }
}

void cocr_image_free(cocr_image *image) { delete image; }
int cocr_image_width(const cocr_image *image) { return image->mat.cols; }
int cocr_image_height(const cocr_image *image) { return image->mat.rows; }

void cocr_image_copy_pixels(const cocr_image *image, uint8_t *out) {
    const cv::Mat &m = image->mat;
    for (int y = 0; y < m.rows; y++) std::memcpy(out + size_t(y) * m.cols * 3, m.ptr(y), size_t(m.cols) * 3);
}

cocr_image *cocr_image_from_pixels(const uint8_t *pixels, int width, int height) {
    if (width <= 0 || height <= 0) return nullptr;
    try {
        cv::Mat m(height, width, CV_8UC3, const_cast<uint8_t *>(pixels));
        return new cocr_image{m.clone()};
    } catch (...) {
        return nullptr;
    }
}

/// reduce_max_side / increase_min_side of utils/process_img.py: the new size rounded to multiples of 32.
static cocr_status side_resize(cv::Mat &img, double ratio, int64_t max_pixels, double *ratio_h, double *ratio_w) {
    int h = img.rows, w = img.cols;
    double scaled_h = std::nearbyint(int64_t(h * ratio) / 32.0) * 32, scaled_w = std::nearbyint(int64_t(w * ratio) / 32.0) * 32;
    if (scaled_w <= 0 || scaled_h <= 0) return COCR_EMPTY_IMAGE;
    if (scaled_h * scaled_w > double(max_pixels) || scaled_h > INT_MAX || scaled_w > INT_MAX) return COCR_TOO_MANY_PIXELS;
    int resize_h = int(scaled_h), resize_w = int(scaled_w);
    cv::resize(img, img, cv::Size(resize_w, resize_h));
    *ratio_h = double(h) / resize_h;
    *ratio_w = double(w) / resize_w;
    return COCR_OK;
}

cocr_status cocr_prepare(const cocr_image *image, int max_side_len, int min_side_len, int min_height,
                         double width_height_ratio, int64_t max_pixels, cocr_image **prepared, cocr_geometry *geometry) {
    *prepared = nullptr;
    try {
        cv::Mat img = image->mat;  // shares the pixels until a step below makes new ones
        geometry->ratio_h = 1.0;
        geometry->ratio_w = 1.0;
        geometry->pad_top = 0;
        int h = img.rows, w = img.cols;
        if (std::max(h, w) > max_side_len) {
            double ratio = h > w ? double(max_side_len) / h : double(max_side_len) / w;
            cocr_status resized = side_resize(img, ratio, max_pixels, &geometry->ratio_h, &geometry->ratio_w);
            if (resized != COCR_OK) return resized;
        }
        h = img.rows;
        w = img.cols;
        if (std::min(h, w) < min_side_len) {
            double ratio = h < w ? double(min_side_len) / h : double(min_side_len) / w;
            cocr_status resized = side_resize(img, ratio, max_pixels, &geometry->ratio_h, &geometry->ratio_w);
            if (resized != COCR_OK) return resized;
        }
        h = img.rows;
        w = img.cols;
        bool use_limit_ratio = width_height_ratio != -1 && double(w) / h > width_height_ratio;
        if (h <= min_height || use_limit_ratio) {
            int new_h = std::max(int(w / width_height_ratio), min_height) * 2;
            int padding_h = int(std::abs(new_h - h) / 2.0);
            if ((int64_t(h) + 2 * int64_t(padding_h)) * int64_t(w) > max_pixels) return COCR_TOO_MANY_PIXELS;
            cv::copyMakeBorder(img, img, padding_h, padding_h, 0, 0, cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0));
            geometry->pad_top = padding_h;
        }
        *prepared = new cocr_image{img};
        return COCR_OK;
    } catch (...) {
        return COCR_FAILED;
    }
}

int cocr_det_input_size(int h, int w, int limit_side_len, int limit_type_max, int *out_h, int *out_w) {
    double ratio = 1.0;
    if (limit_type_max) {
        if (std::max(h, w) > limit_side_len) ratio = h > w ? double(limit_side_len) / h : double(limit_side_len) / w;
    } else {
        if (std::min(h, w) < limit_side_len) ratio = h < w ? double(limit_side_len) / h : double(limit_side_len) / w;
    }
    int resize_h = int(h * ratio), resize_w = int(w * ratio);
    resize_h = int(std::nearbyint(resize_h / 32.0) * 32);
    resize_w = int(std::nearbyint(resize_w / 32.0) * 32);
    *out_h = resize_h;
    *out_w = resize_w;
    return resize_h > 0 && resize_w > 0;
}

cocr_status cocr_det_preprocess(const cocr_image *image, int height, int width, const double mean[3],
                                const double std[3], float *out) {
    try {
        cv::Mat resized;
        cv::resize(image->mat, resized, cv::Size(width, height));
        const float scale = float(1 / 255.0);
        size_t plane = size_t(height) * width;
        for (int y = 0; y < height; y++) {
            const uint8_t *row = resized.ptr<uint8_t>(y);
            for (int x = 0; x < width; x++) {
                for (int c = 0; c < 3; c++) {
                    // float32 pixel * scale, then float64 (mean and std are float64 arrays), then float32.
                    float scaled = float(row[x * 3 + c]) * scale;
                    out[c * plane + size_t(y) * width + x] = float((double(scaled) - mean[c]) / std[c]);
                }
            }
        }
        return COCR_OK;
    } catch (...) {
        return COCR_FAILED;
    }
}

int cocr_db_postprocess(const float *pred_data, int pred_h, int pred_w, int src_h, int src_w,
                        const cocr_db_params *params, float *boxes, int capacity) {
    try {
        cv::Mat pred(pred_h, pred_w, CV_32FC1, const_cast<float *>(pred_data));
        cv::Mat bitmap = pred > float(params->thresh);  // 0 or 255
        if (params->use_dilation) cv::dilate(bitmap, bitmap, cv::Mat::ones(2, 2, CV_8UC1));
        std::vector<std::vector<cv::Point>> contours;
        cv::findContours(bitmap, contours, cv::RETR_LIST, cv::CHAIN_APPROX_SIMPLE);
        size_t candidates = std::min(contours.size(), size_t(std::max(params->max_candidates, 0)));
        const int min_size = 3;
        int count = 0;
        for (size_t index = 0; index < candidates && count < capacity; index++) {
            const auto &contour = contours[index];
            cv::Point2f points[4];
            float short_side;
            mini_box(contour, points, &short_side);
            if (short_side < min_size) continue;
            double score = params->score_mode_slow ? box_score_slow(pred, contour) : box_score_fast(pred, points);
            if (params->box_thresh > score) continue;
            std::vector<cv::Point> expanded = unclip(points, params->unclip_ratio);
            if (expanded.size() < 3) continue;
            cv::Point2f box[4];
            mini_box(expanded, box, &short_side);
            if (short_side < min_size + 2) continue;
            for (int k = 0; k < 4; k++) {
                // float32 arithmetic, np.round (half to even), clip, astype(np.int32).
                float x = std::nearbyint(box[k].x / float(pred_w) * float(src_w));
                float y = std::nearbyint(box[k].y / float(pred_h) * float(src_h));
                box[k].x = float(int(std::clamp(x, 0.0f, float(src_w))));
                box[k].y = float(int(std::clamp(y, 0.0f, float(src_h))));
            }
            // TextDetector.filter_tag_det_res.
            order_clockwise(box);
            for (int k = 0; k < 4; k++) {
                box[k].x = float(int(std::min(std::max(box[k].x, 0.0f), float(src_w - 1))));
                box[k].y = float(int(std::min(std::max(box[k].y, 0.0f), float(src_h - 1))));
            }
            int rect_width = int(norm2(box[0], box[1]));
            int rect_height = int(norm2(box[0], box[3]));
            if (rect_width <= 3 || rect_height <= 3) continue;
            for (int k = 0; k < 4; k++) {
                boxes[count * 8 + k * 2] = box[k].x;
                boxes[count * 8 + k * 2 + 1] = box[k].y;
            }
            count++;
        }
        return count;
    } catch (...) {
        return -1;
    }
}

cocr_image *cocr_crop(const cocr_image *image, const float points[8]) {
    try {
        cv::Point2f src[4];
        for (int k = 0; k < 4; k++) src[k] = cv::Point2f(points[k * 2], points[k * 2 + 1]);
        int crop_w = int(std::max(norm2(src[0], src[1]), norm2(src[2], src[3])));
        int crop_h = int(std::max(norm2(src[0], src[3]), norm2(src[1], src[2])));
        if (crop_w <= 0 || crop_h <= 0) return nullptr;
        cv::Point2f dst[4] = {cv::Point2f(0, 0), cv::Point2f(float(crop_w), 0), cv::Point2f(float(crop_w), float(crop_h)),
                              cv::Point2f(0, float(crop_h))};
        cv::Mat m = cv::getPerspectiveTransform(src, dst);
        cv::Mat warped;
        cv::warpPerspective(image->mat, warped, m, cv::Size(crop_w, crop_h), cv::INTER_CUBIC, cv::BORDER_REPLICATE);
        if (double(warped.rows) / warped.cols >= 1.5) {
            cv::Mat turned;
            cv::rotate(warped, turned, cv::ROTATE_90_COUNTERCLOCKWISE);  // np.rot90
            warped = turned;
        }
        return new cocr_image{warped};
    } catch (...) {
        return nullptr;
    }
}

cocr_image *cocr_rotated180(const cocr_image *image) {
    try {
        cv::Mat turned;
        cv::rotate(image->mat, turned, cv::ROTATE_180);
        return new cocr_image{turned};
    } catch (...) {
        return nullptr;
    }
}

cocr_status cocr_resize_normalize(const cocr_image *image, int height, int width, float *out) {
    try {
        const cv::Mat &img = image->mat;
        double ratio = img.cols / double(img.rows);
        int resized_w = std::ceil(height * ratio) > width ? width : int(std::ceil(height * ratio));
        if (resized_w <= 0) resized_w = 1;
        cv::Mat resized;
        cv::resize(img, resized, cv::Size(resized_w, height));
        size_t plane = size_t(height) * width;
        std::fill(out, out + plane * 3, 0.0f);
        for (int y = 0; y < height; y++) {
            const uint8_t *row = resized.ptr<uint8_t>(y);
            for (int x = 0; x < resized_w; x++) {
                for (int c = 0; c < 3; c++) {
                    float v = float(row[x * 3 + c]) / 255.0f;
                    v -= 0.5f;
                    v /= 0.5f;
                    out[c * plane + size_t(y) * width + x] = v;
                }
            }
        }
        return COCR_OK;
    } catch (...) {
        return COCR_FAILED;
    }
}

}  // extern "C"
