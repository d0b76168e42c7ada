import Foundation
import KernelConfig
import KernelCore
import NIOCore
import XCTest
@testable import Inference

/// `inference.pipelines`: decoding, the checks of step inputs, and the request forms an image arrives in.
final class PipelineConfigurationTests: XCTestCase {
    private let models = """
        inference:
          models:
            - {name: det, path: /det.onnx, max_batch_size: 8, dynamic_batching: {}}
            - {name: rec, path: /rec.onnx}
          pipelines:

        """

    private func decode(_ pipelines: String) throws -> InferenceConfiguration {
        let root = try YAMLParser().parse(models + pipelines, file: "etc/k.yaml")
        let value = try XCTUnwrap(try ConfigValue(node: root, path: "").mapping().optional("inference"))
        return try InferenceConfiguration.decode(value) { $0 }
    }

    private func assertError(_ text: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try decode(text), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(fragment), "\(error)", file: file, line: line)
        }
    }

    func testDecodesStepsInputsAndRapidOCRDefaults() throws {
        let configuration = try decode("""
                - name: ocr
                  priority: 2
                  steps:
                    - {name: decode, op: decode_image, max_pixels: 1000}
                    - {name: image, op: ocr_prepare}
                    - {name: det_input, op: det_preprocess, limit_type: max, limit_side_len: 960}
                    - {name: det, model: det}
                    - {name: boxes, op: db_postprocess, inputs: [det, image], unclip_ratio: 2.0, score_mode: slow}
                    - {name: crops, op: crop_boxes, inputs: [image, boxes]}
                    - {name: rec_input, op: rec_preprocess, rec_batch_num: 4, rows_per_request: 1}
                    - {name: rec, model: rec}
                    - {name: text, op: ctc_decode, model: rec}
                    - {name: lines, op: ocr_lines, inputs: [image, boxes, text]}
            """)
        let pipeline = try XCTUnwrap(configuration.pipelines.first)
        XCTAssertEqual(pipeline.name, "ocr")
        XCTAssertEqual(pipeline.priority, 2)
        XCTAssertEqual(pipeline.steps.map(\.name), ["decode", "image", "det_input", "det", "boxes", "crops", "rec_input",
                                                    "rec", "text", "lines"])
        XCTAssertEqual(pipeline.steps[0].inputs, [-1], "the first step reads the request")
        XCTAssertEqual(pipeline.steps[4].inputs, [3, 1])
        XCTAssertEqual(pipeline.steps[6].inputs, [5], "by default a step reads the previous one")
        guard case .operation(.decodeImage(let maxPixels)) = pipeline.steps[0].kind else { return XCTFail() }
        XCTAssertEqual(maxPixels, 1000)
        guard case .operation(.ocrPrepare(let prepare)) = pipeline.steps[1].kind else { return XCTFail() }
        XCTAssertEqual([prepare.maxSideLen, prepare.minSideLen, prepare.minHeight], [2000, 30, 30])
        XCTAssertEqual(prepare.widthHeightRatio, 8)
        guard case .operation(.detPreprocess(let det)) = pipeline.steps[2].kind else { return XCTFail() }
        XCTAssertTrue(det.limitTypeMax)
        XCTAssertEqual(det.limitSideLen, 960)
        XCTAssertEqual(det.mean, [0.5, 0.5, 0.5])
        guard case .operation(.dbPostprocess(let db)) = pipeline.steps[4].kind else { return XCTFail() }
        XCTAssertEqual([db.thresh, db.boxThresh, db.unclipRatio], [0.3, 0.5, 2.0])
        XCTAssertEqual(db.maxCandidates, 1000)
        XCTAssertTrue(db.useDilation && db.scoreModeSlow)
        guard case .operation(.recPreprocess(let rec)) = pipeline.steps[6].kind else { return XCTFail() }
        XCTAssertEqual(rec.imageShape, [3, 48, 320])
        XCTAssertEqual(rec.batchNum, 4)
        XCTAssertEqual(rec.rowsPerRequest, 1)
        guard case .model("det") = pipeline.steps[3].kind else { return XCTFail() }
        guard case .operation(.ocrLines(let textScore)) = pipeline.steps[9].kind else { return XCTFail() }
        XCTAssertEqual(textScore, 0.5)
        // decode is last read by image (1), det_input by det (3), det by boxes (4); image and boxes by lines (9).
        XCTAssertEqual(Array(pipeline.lastReaders.prefix(9)), [1, 9, 3, 4, 9, 6, 7, 8, 9])
        XCTAssertEqual(pipeline.lastReaders[9], Int.max, "the answer is kept")
        XCTAssertTrue(try decode("").pipelines.isEmpty)
    }

    func testRejectsStepsThatCannotWork() {
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, model: missing}]}
            """, "no model \"missing\" in inference.models")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, model: det}]}
            """, "a model step reads model inputs")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, op: crop_boxes}]}
            """, "this step reads an image, text boxes, but its inputs give an image")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, op: ocr_prepare, input: nowhere}]}
            """, "no earlier step is named \"nowhere\"")
        assertError("""
                - {name: p, steps: [{name: a, op: sharpen}]}
            """, "decode_image, ocr_prepare")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: a, op: ocr_prepare}]}
            """, "step name \"a\" is used twice")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image, max_pixel: 3}]}
            """, "unknown key")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, op: det_preprocess, input: a, limit_type: mid}]}
            """, "expected \"min\" or \"max\"")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}]}
                - {name: p, steps: [{name: a, op: decode_image}]}
            """, "pipeline \"p\" is declared twice")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, op: ocr_prepare, width_height_ratio: 0}]}
            """, "a positive number, or -1")
        assertError("""
                - {name: p, steps: [{name: a, op: decode_image}, {name: b, op: rec_preprocess, rows_per_request: 0}]}
            """, "a positive integer")
    }
}

final class ImageUploadTests: XCTestCase {
    private func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    func testTakesTheFileFieldOfAForm() throws {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            + "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
            + "PNGDATA\r\n--XyZ--\r\n"
        let upload = ImageUpload(body: buffer(body), contentType: "multipart/form-data; boundary=\"XyZ\"")
        XCTAssertEqual(String(buffer: try upload.imageBytes()), "PNGDATA")
        XCTAssertEqual(String(buffer: try ImageUpload(body: buffer("raw"), contentType: "image/png").imageBytes()), "raw")
        XCTAssertEqual(String(buffer: try ImageUpload(body: buffer("raw"), contentType: nil).imageBytes()), "raw")
    }

    func testQuotedParametersHoldTheirSemicolons() throws {
        // A quoted filename with "; name=file" in it names nothing: the "photo" part is not the file.
        let body = "--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"x; name=file;.png\"\r\n\r\nNOT\r\n"
            + "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\\\"b.png\"\r\n\r\nPNGDATA\r\n--b--\r\n"
        XCTAssertEqual(String(buffer: try ImageUpload(body: buffer(body), contentType: "multipart/form-data; boundary=b").imageBytes()),
                       "PNGDATA")
        let type = MediaType("Multipart/Form-Data ; charset=\"a;b\" ; Boundary = \"x\\\"y\" ; empty=; flag")
        XCTAssertEqual(type.type, "multipart/form-data")
        XCTAssertEqual(type.parameters, ["charset": "a;b", "boundary": "x\"y", "empty": ""])
    }

    func testRefusesBrokenForms() {
        func assertRefused(_ body: String, _ type: String, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try ImageUpload(body: buffer(body), contentType: type).imageBytes(), line: line) { error in
                let failure = error as? KernelHTTPError
                XCTAssertEqual(failure?.status, 400, line: line)
                XCTAssertTrue(failure?.message.contains(fragment) == true, "\(error)", line: line)
            }
        }
        assertRefused("x", "multipart/form-data", "boundary")
        assertRefused("no delimiter here", "multipart/form-data; boundary=b", "boundary not found")
        assertRefused("--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b",
                      "no \"file\" field")
        assertRefused("--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nunterminated", "multipart/form-data; boundary=b",
                      "not closed")
        assertRefused("--b\r\nno header end", "multipart/form-data; boundary=b", "end of its headers")
        let many = (0..<20).map { _ in "--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n" }.joined() + "--b--"
        assertRefused(many, "multipart/form-data; boundary=b", "more than 16 parts")
        assertRefused("{\"picture\": \"\"}", "application/json", "needs \"image\"")
        assertRefused("{\"image\": \"a*b\"}", "application/json", "not valid base64")
        assertRefused("{\"image\": ", "application/json", "failed to parse")
    }

    func testBase64() {
        XCTAssertEqual(Base64.decode("aGVsbG8="), Array("hello".utf8))
        XCTAssertEqual(Base64.decode("aGVsbG8"), Array("hello".utf8))
        XCTAssertEqual(Base64.decode(""), [])
        XCTAssertEqual(Base64.decode("+/8="), [0xFB, 0xFF])
        XCTAssertNil(Base64.decode("aGVs=bG8"))
        XCTAssertNil(Base64.decode("a"))
        XCTAssertNil(Base64.decode("aGVsbG8==="))
        // MIME's line breaks (Python's base64.encodebytes) and a data URL's prefix, as clients send them.
        XCTAssertEqual(Base64.decode("aGVs\nbG8=\n"), Array("hello".utf8))
        XCTAssertEqual(Base64.decode("aGVs\r\nbG8=\r\n"), Array("hello".utf8))
        XCTAssertEqual(Base64.decode("data:image/png;base64,aGVsbG8="), Array("hello".utf8))
        XCTAssertNil(Base64.decode("data:text/plain,aGVsbG8="), "a data URL that is not base64")
        XCTAssertNil(Base64.decode("aGVs-bG8"), "the URL-safe alphabet is not the standard one")
    }

    func testQueryFlag() {
        XCTAssertTrue(PipelineHandler.queryFlag("text_only=1", "text_only"))
        XCTAssertTrue(PipelineHandler.queryFlag("a=2&text_only=true", "text_only"))
        XCTAssertTrue(PipelineHandler.queryFlag("text_only", "text_only"))
        XCTAssertFalse(PipelineHandler.queryFlag("text_only=0", "text_only"))
        XCTAssertFalse(PipelineHandler.queryFlag("text_onlyx=1", "text_only"))
        XCTAssertFalse(PipelineHandler.queryFlag("", "text_only"))
    }
}
