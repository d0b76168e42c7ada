import COCRVisionAPI
import Foundation
import KernelCore
import XCTest
@testable import Inference

/// A minimal PNG writer (stored deflate blocks), so the decoder can be tried on exact bytes.
enum TestPNG {
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    static func be32(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)] }

    static func chunk(_ kind: String, _ payload: [UInt8]) -> [UInt8] {
        let typed = Array(kind.utf8) + payload
        return be32(UInt32(payload.count)) + typed + be32(crc32(typed))
    }

    /// An 8-bit RGB PNG of `rgb` pixels (row-major), or just its header when `headerOnly`.
    static func rgb(width: Int, height: Int, rgb: [UInt8] = [], headerOnly: Bool = false) -> [UInt8] {
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        let header = chunk("IHDR", be32(UInt32(width)) + be32(UInt32(height)) + [8, 2, 0, 0, 0])
        if headerOnly { return signature + header }
        var raw: [UInt8] = []
        for y in 0..<height { raw += [0] + rgb[(y * width * 3)..<((y + 1) * width * 3)] }
        var zlib: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let length = min(65535, raw.count - offset)
            let final: UInt8 = offset + length == raw.count ? 1 : 0
            zlib += [final, UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
            zlib += raw[offset..<offset + length]
            offset += length
        } while offset < raw.count
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in raw { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
        zlib += be32(b << 16 | a)
        return signature + header + chunk("IDAT", zlib) + chunk("IEND", [])
    }
}

final class OCRVisionTests: XCTestCase {
    /// libKernelOCRVision.so from the build directory (the test binary's), opened as the kernel opens it.
    private var vision: OCRVisionLibrary!

    override func setUpWithError() throws {
        vision = try OCRVisionLibrary.open(configured: nil, environment: ProcessEnvironment.all())
    }

    func testTheLibraryIsLookedForWhereConfiguredThenInTheEnvironmentThenBesideTheExecutable() {
        let environment = ["KERNEL_OCR_VISION_LIBRARY": "/env/libv.so"]
        XCTAssertEqual(OCRVisionLibrary.candidates(configured: "/etc/libv.so", environment: environment,
                                                   executableDirectory: "/opt/k/bin"), ["/etc/libv.so"])
        XCTAssertEqual(OCRVisionLibrary.candidates(configured: nil, environment: environment,
                                                   executableDirectory: "/opt/k/bin"), ["/env/libv.so"])
        XCTAssertEqual(OCRVisionLibrary.candidates(configured: nil, environment: ["KERNEL_OCR_VISION_LIBRARY": ""],
                                                   executableDirectory: "/opt/k/bin"),
                       ["/opt/k/bin/libKernelOCRVision.so", "/opt/k/bin/../lib/kernel/libKernelOCRVision.so"])
        // The test binary is in the build directory, where SwiftPM puts the library.
        XCTAssertEqual(vision.path, OCRVisionLibrary.executableDirectory()! + "/libKernelOCRVision.so")
    }

    func testALibraryThatCannotBeOpenedNamesEveryPathTriedAndWhy() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ocr-vision-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let notALibrary = directory + "/libKernelOCRVision.so"
        try Data(repeating: UInt8(ascii: "x"), count: 4096).write(to: URL(fileURLWithPath: notALibrary))
        XCTAssertThrowsError(try OCRVisionLibrary(candidates: [directory + "/missing.so", notALibrary])) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("cannot open the OCR vision library libKernelOCRVision.so"), message)
            XCTAssertTrue(message.contains(directory + "/missing.so: " + directory + "/missing.so: cannot open shared object file"), message)
            XCTAssertTrue(message.contains(notALibrary + ": ") && message.contains("invalid ELF header"), message)
        }
        // A library without the shim's functions (libm) is refused by name.
        XCTAssertThrowsError(try OCRVisionLibrary(candidates: ["libm.so.6"])) { error in
            XCTAssertTrue("\(error)".contains("libm.so.6 is not the OCR vision library (no cocr_set_threads"), "\(error)")
        }
    }

    private func decode(_ bytes: [UInt8], maxPixels: Int64 = 1_000_000) throws -> OCRImage {
        try bytes.withUnsafeBytes { try OCRVision.decode($0, maxPixels: maxPixels, vision: vision) }
    }

    private func assertStatus(_ bytes: [UInt8], _ status: Int, _ fragment: String, maxPixels: Int64 = 1_000_000,
                              line: UInt = #line) {
        XCTAssertThrowsError(try decode(bytes, maxPixels: maxPixels), line: line) { error in
            let failure = error as? KernelHTTPError
            XCTAssertEqual(failure?.status, status, "\(error)", line: line)
            XCTAssertTrue(failure?.message.contains(fragment) == true, "\(error)", line: line)
        }
    }

    func testProbesSizesFromHeadersAlone() {
        func probe(_ bytes: [UInt8]) -> ImageHeader? { bytes.withUnsafeBytes { OCRVision.probe($0, vision: vision) } }
        XCTAssertEqual(probe(TestPNG.rgb(width: 20000, height: 30000, headerOnly: true)),
                       ImageHeader(format: .png, width: 20000, height: 30000))
        // JPEG: SOI, an APP0 segment, then SOF0 (precision 8, height 0x0102, width 0x0304).
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x01, 0x02, 0x03,
                             0x04, 0x03, 0x01, 0x11, 0x00]
        XCTAssertEqual(probe(jpeg), ImageHeader(format: .jpeg, width: 0x304, height: 0x102))
        var bmp = [UInt8](repeating: 0, count: 54)
        bmp[0] = 0x42; bmp[1] = 0x4D; bmp[14] = 40
        bmp[18] = 0x10; bmp[19] = 0x27  // width 10000
        bmp[22] = 0xF0; bmp[23] = 0xD8; bmp[24] = 0xFF; bmp[25] = 0xFF  // height -10000: top-down
        XCTAssertEqual(probe(bmp), ImageHeader(format: .bmp, width: 10000, height: 10000))
        var webp = Array("RIFF\0\0\0\0WEBPVP8X".utf8) + [UInt8](repeating: 0, count: 18)
        webp[24] = 0x3F; webp[25] = 0x1F  // width - 1 = 7999
        webp[27] = 0xCF; webp[28] = 0x07  // height - 1 = 1999
        XCTAssertEqual(probe(webp), ImageHeader(format: .webp, width: 8000, height: 2000))
        XCTAssertNil(probe(Array("GIF89a".utf8)))
        XCTAssertNil(probe([0x89, 0x50, 0x4E, 0x47]))
    }

    func testDecodesPNGToBGR() throws {
        let image = try decode(TestPNG.rgb(width: 2, height: 1, rgb: [255, 0, 0, 0, 0, 255]))
        XCTAssertEqual([image.width, image.height], [2, 1])
        XCTAssertEqual(image.bgrPixels, [0, 0, 255, 255, 0, 0], "OpenCV's BGR order")
    }

    func testRefusesBadImagesBeforeDecoding() {
        // 400 million pixels declared, no pixel data at all: refused from the header.
        assertStatus(TestPNG.rgb(width: 20000, height: 20000, headerOnly: true), 413, "20000x20000 pixels is more than max_pixels")
        assertStatus(TestPNG.rgb(width: 0, height: 5, headerOnly: true), 400, "no pixels")
        assertStatus([], 400, "empty")
        assertStatus(Array("hello".utf8), 400, "not an image")
        let png = TestPNG.rgb(width: 4, height: 4, rgb: [UInt8](repeating: 7, count: 48))
        assertStatus(Array(png.prefix(png.count - 30)), 400, "truncated or corrupt")
        // A JPEG without its end-of-image marker (libjpeg alone would fill the rest with gray).
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x10, 0x00, 0x10, 0x01, 0x01, 0x11, 0x00,
                             0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x12, 0x34]
        assertStatus(jpeg, 400, "truncated or corrupt")
    }

    func testDBPostprocessGivesRapidOCRsBoxes() {
        // Two blobs in a 64x96 probability map, boxes scaled to 128x192: the values rapidocr_onnxruntime's
        // DBPostProcess and filter_tag_det_res give for the same map (cv2, pyclipper).
        var pred = [Float](repeating: 0, count: 64 * 96)
        for y in 10..<20 { for x in 20..<60 { pred[y * 96 + x] = 0.9 } }
        for y in 40..<52 { for x in 8..<30 { pred[y * 96 + x] = 0.8 } }
        var parameters = cocr_db_params(thresh: 0.3, box_thresh: 0.5, max_candidates: 1000, unclip_ratio: 1.6,
                                        use_dilation: 1, score_mode_slow: 0)
        var boxes = [Float](repeating: 0, count: 80)
        let count = vision.dbPostprocess(pred, 64, 96, 128, 192, &parameters, &boxes, 10)
        XCTAssertEqual(count, 2)
        XCTAssertEqual(Array(boxes[0..<16]), [4, 68, 72, 68, 72, 116, 4, 116, 28, 8, 132, 8, 132, 52, 28, 52])
        // Box scores are 0.706 and 0.798 (rapidocr's box_score_fast).
        parameters.box_thresh = 0.75
        XCTAssertEqual(vision.dbPostprocess(pred, 64, 96, 128, 192, &parameters, &boxes, 10), 1, "box_thresh drops the fainter box")
        XCTAssertEqual(Array(boxes[0..<8]), [28, 8, 132, 8, 132, 52, 28, 52])
    }

    func testDetectionSizeRoundsToMultiplesOf32() {
        var height: Int32 = 0, width: Int32 = 0
        XCTAssertEqual(vision.detInputSize(100, 300, 736, 0, &height, &width), 1)
        XCTAssertEqual([height, width], [736, 2208])
        XCTAssertEqual(vision.detInputSize(1000, 1500, 736, 0, &height, &width), 1)
        XCTAssertEqual([height, width], [992, 1504], "no resize above the limit, only rounding")
        XCTAssertEqual(vision.detInputSize(1000, 3000, 960, 1, &height, &width), 1)
        XCTAssertEqual([height, width], [320, 960])
        XCTAssertEqual(vision.detInputSize(10, 10, 10, 1, &height, &width), 0, "rounds to nothing")
    }

    func testCropTurnsTallBoxesAndNormalisesWithPadding() throws {
        let pixels = (0..<(40 * 30 * 3)).map { UInt8($0 % 251) }
        let image = try XCTUnwrap(OCRImage(bgr: pixels, width: 40, height: 30, vision: vision))
        // 8 wide, 20 tall: turned a quarter, so 20 wide and 8 tall.
        let tall: [Float] = [5, 5, 13, 5, 13, 25, 5, 25]
        let crop = try XCTUnwrap(vision.crop(image.pointer, tall).map { OCRImage($0, vision) })
        XCTAssertEqual([crop.width, crop.height], [20, 8])
        var out = [Float](repeating: 9, count: 3 * 8 * 48)
        XCTAssertEqual(vision.resizeNormalize(crop.pointer, 8, 48, &out), COCR_OK)
        // Resized to 20 wide (8 * 20 / 8), values in [-1, 1], zeros to the right.
        XCTAssertTrue(out.allSatisfy { $0 >= -1 && $0 <= 1 })
        XCTAssertEqual(out[20..<48].allSatisfy { $0 == 0 }, true)
        let flipped = try XCTUnwrap(vision.rotated180(crop.pointer).map { OCRImage($0, vision) })
        XCTAssertEqual(Array(flipped.bgrPixels.prefix(3)), Array(crop.bgrPixels.suffix(3)))
    }

    func testRowsPerRequestSplitsABatchKeepingItsPaddedWidth() throws {
        // Three crops of different widths in one batch: padded to the widest (16 wide at height 8 is ratio 2,
        // below the configured 40/8, so 40), then one request per row.
        let crops = try [12, 16, 24].map { width in
            try XCTUnwrap(OCRImage(bgr: (0..<(width * 8 * 3)).map { UInt8($0 % 199) }, width: width, height: 8, vision: vision))
        }
        let whole = try OCROperations.batches(crops, shape: [3, 8, 40], batchNum: 6, padToWidest: true, vision: vision)
        XCTAssertEqual(whole.groups.map { $0[0].shape }, [[3, 3, 8, 40]])
        XCTAssertEqual(whole.items, [[0, 1, 2]])
        let split = try OCROperations.batches(crops, shape: [3, 8, 40], batchNum: 6, rowsPerRequest: 2, padToWidest: true,
                                              vision: vision)
        XCTAssertEqual(split.groups.map { $0[0].shape }, [[2, 3, 8, 40], [1, 3, 8, 40]])
        XCTAssertEqual(split.items, [[0, 1], [2]])
        XCTAssertEqual(split.itemCount, 3)
        // The same values, row for row, as the whole batch's tensor.
        XCTAssertEqual(split.groups.flatMap { $0[0].bytes }, whole.groups[0][0].bytes)
    }
}

final class OCRTextTests: XCTestCase {
    private func quad(_ x: Float, _ y: Float) -> OCRText.Quad {
        [SIMD2(x, y), SIMD2(x + 10, y), SIMD2(x + 10, y + 5), SIMD2(x, y + 5)]
    }

    func testSortsTopToBottomThenLeftToRightWithinTenPixels() {
        let boxes = [quad(50, 8), quad(10, 100), quad(5, 0), quad(90, 3), quad(0, 30)]
        // (5,0), (90,3), (50,8) are one line (< 10 px apart): left to right gives 5, 50, 90; but the rule only
        // swaps neighbours, as rapidocr's bubble pass does.
        let sorted = OCRText.sortedBoxes(boxes).map { $0[0] }
        XCTAssertEqual(sorted, [SIMD2(5, 0), SIMD2(50, 8), SIMD2(90, 3), SIMD2(0, 30), SIMD2(10, 100)])
        XCTAssertEqual(OCRText.sortedBoxes([]).count, 0)
    }

    func testCharacterListFromMetadata() {
        XCTAssertEqual(OCRText.characterList(metadata: "a\nb\r\nc\n"), ["blank", "a", "b", "c", " "])
        XCTAssertEqual(OCRText.splitLines("x\n\ny\u{2028}z"), ["x", "", "y", "z"])
        XCTAssertEqual(OCRText.splitLines(""), [])
    }

    func testCTCGreedyDecodeMergesRepeatsAndDropsBlanks() {
        let characters = ["blank", "a", "b", " "]
        // Six steps, four classes: a a blank a b b -> "aab".
        let steps: [[Float]] = [[0, 0.9, 0.1, 0], [0, 0.8, 0.2, 0], [0.7, 0.1, 0.2, 0], [0, 0.6, 0, 0.4],
                                [0, 0, 1.0, 0], [0.1, 0, 0.5, 0.4]]
        let flat = steps.flatMap { $0 } + [Float](repeating: 0, count: 24).enumerated().map { $0.offset % 4 == 0 ? 1 : 0 }
        let decoded = flat.withUnsafeBufferPointer { OCRText.ctcDecode($0, rows: 2, steps: 6, classes: 4, characters: characters) }
        XCTAssertEqual(decoded[0].text, "aab")
        XCTAssertEqual(decoded[0].score, (0.9 + 0.6 + 1.0) / 3, accuracy: 1e-6)
        XCTAssertEqual(decoded[1].text, "")
        XCTAssertEqual(decoded[1].score, 0, "nothing kept: rapidocr's score is 0")
    }
}
