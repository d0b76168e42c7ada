import COCRVisionAPI
import KernelCore

/// The built-in operations, each a blocking function of its input values (run on the pipeline's thread pool).
enum OCROperations {
    static func run(_ operation: PipelineOperation, _ inputs: [PipelineValue],
                    characters: (String) throws -> [String]) throws -> PipelineValue {
        let vision = try OCRVisionLibrary.forSteps()
        switch (operation, inputs.count) {
        case (.decodeImage(let maxPixels), 1):
            guard case .upload(let upload) = inputs[0] else { break }
            return .image(try decodeImage(upload, maxPixels: maxPixels, vision: vision))
        case (.ocrPrepare(let parameters), 1):
            guard case .image(let image) = inputs[0] else { break }
            return .image(try prepare(image, parameters, vision: vision))
        case (.detPreprocess(let parameters), 1):
            guard case .image(let image) = inputs[0] else { break }
            return .tensors(try detPreprocess(image, parameters, vision: vision))
        case (.dbPostprocess(let parameters), 2):
            guard case .tensors(let output) = inputs[0], case .image(let image) = inputs[1] else { break }
            return .boxes(try dbPostprocess(output, image: image, parameters, vision: vision))
        case (.cropBoxes, 2):
            guard case .image(let image) = inputs[0], case .boxes(let boxes) = inputs[1] else { break }
            return .crops(try crop(image, boxes, vision: vision))
        case (.clsPreprocess(let parameters), 1):
            guard case .crops(let crops) = inputs[0] else { break }
            return .tensors(try batches(crops, shape: parameters.imageShape, batchNum: parameters.batchNum,
                                         rowsPerRequest: parameters.rowsPerRequest, padToWidest: false, vision: vision))
        case (.clsPostprocess(let parameters), 2):
            guard case .crops(let crops) = inputs[0], case .tensors(let output) = inputs[1] else { break }
            return .crops(try classify(crops, output, parameters, vision: vision))
        case (.recPreprocess(let parameters), 1):
            guard case .crops(let crops) = inputs[0] else { break }
            return .tensors(try batches(crops, shape: parameters.imageShape, batchNum: parameters.batchNum,
                                         rowsPerRequest: parameters.rowsPerRequest, padToWidest: true, vision: vision))
        case (.ctcDecode(let model), 1):
            guard case .tensors(let output) = inputs[0] else { break }
            return .texts(try ctcDecode(output, characters: try characters(model)))
        case (.ocrLines(let textScore), 3):
            guard case .image(let image) = inputs[0], case .boxes(let boxes) = inputs[1],
                  case .texts(let texts) = inputs[2] else { break }
            return .lines(lines(image, boxes, texts, textScore: textScore))
        default:
            break
        }
        // The configuration checked every step's inputs: this is a bug, never a client's fault.
        throw KernelHTTPError(500, "pipeline step got values of the wrong kind")
    }

    static func decodeImage(_ upload: ImageUpload, maxPixels: Int64, vision: OCRVisionLibrary) throws -> PipelineImage {
        let bytes = try upload.imageBytes()
        let image = try bytes.withUnsafeReadableBytes { try OCRVision.decode($0, maxPixels: maxPixels, vision: vision) }
        return PipelineImage(image: image, rawWidth: image.width, rawHeight: image.height)
    }

    static func prepare(_ input: PipelineImage, _ p: OCRPrepareParameters, vision: OCRVisionLibrary) throws -> PipelineImage {
        var geometry = cocr_geometry()
        var prepared: OpaquePointer?
        let status = vision.prepare(input.image.pointer, Int32(p.maxSideLen), Int32(p.minSideLen), Int32(p.minHeight),
                                  p.widthHeightRatio, p.maxPixels, &prepared, &geometry)
        if status == COCR_TOO_MANY_PIXELS {
            throw KernelHTTPError(413, "the image (\(input.image.width)x\(input.image.height)) is too thin for OCR: resized as rapidocr resizes it (min_side_len \(p.minSideLen), width_height_ratio \(p.widthHeightRatio)) it would have more than max_pixels \(p.maxPixels) pixels")
        }
        if status == COCR_EMPTY_IMAGE {
            // rapidocr refuses it the same way (ResizeImgError): a side that rounds to no multiple of 32.
            throw KernelHTTPError(400, "the image (\(input.image.width)x\(input.image.height)) cannot be resized for OCR: scaled to max_side_len \(p.maxSideLen) or min_side_len \(p.minSideLen), a side rounds to 0 pixels")
        }
        try OCRVisionError.check(status, maxPixels: 0, header: nil)
        guard let prepared else { throw KernelHTTPError(500, "the image could not be resized") }
        return PipelineImage(image: OCRImage(prepared, vision), rawWidth: input.rawWidth, rawHeight: input.rawHeight,
                             ratioWidth: geometry.ratio_w, ratioHeight: geometry.ratio_h, padTop: Int(geometry.pad_top))
    }

    /// TextDetector.get_preprocess picks the side limit, DetPreProcess resizes and normalises.
    static func detPreprocess(_ input: PipelineImage, _ p: DetPreprocessParameters, vision: OCRVisionLibrary) throws -> TensorGroups {
        let image = input.image
        var limit = p.limitSideLen
        if p.limitTypeMax {
            let longest = max(image.width, image.height)
            limit = longest < 960 ? 960 : longest < 1500 ? 1500 : 2000
        }
        var height: Int32 = 0
        var width: Int32 = 0
        guard vision.detInputSize(Int32(image.height), Int32(image.width), Int32(limit), p.limitTypeMax ? 1 : 0,
                                  &height, &width) != 0 else {
            // rapidocr finds no text in an image that rounds to nothing.
            return TensorGroups(groups: [], items: [], itemCount: 1)
        }
        // A strip scaled so that its short side is limit_side_len grows by the ratio of its sides: refused before
        // the tensor (12 bytes a pixel) and the model's activations are made for it.
        guard Int64(height) * Int64(width) <= p.maxPixels else {
            throw KernelHTTPError(413, "the image (\(image.width)x\(image.height) after ocr_prepare) is too thin for detection: resized to limit_side_len \(limit) it would be \(width)x\(height), more than max_pixels \(p.maxPixels) pixels")
        }
        let tensor = try FloatTensor.make(shape: [1, 3, Int(height), Int(width)]) { out in
            let status = p.mean.withUnsafeBufferPointer { mean in
                p.std.withUnsafeBufferPointer { std in
                    vision.detPreprocess(image.pointer, height, width, mean.baseAddress, std.baseAddress, out)
                }
            }
            try OCRVisionError.check(status, maxPixels: 0, header: nil)
        }
        return TensorGroups(groups: [[tensor]], items: [[0]], itemCount: 1)
    }

    static func dbPostprocess(_ output: TensorGroups, image: PipelineImage, _ p: DBPostprocessParameters, vision: OCRVisionLibrary) throws -> [OCRText.Quad] {
        guard let first = output.groups.first?.first else { return [] }
        let shape = first.shape
        guard shape.count == 4, shape[0] == 1, shape[1] == 1, shape[2] > 0, shape[3] > 0 else {
            throw KernelHTTPError(500, "the detection model answered shape \(InferenceCodec.shapeText(shape)), not [1,1,H,W]")
        }
        var parameters = cocr_db_params(thresh: p.thresh, box_thresh: p.boxThresh, max_candidates: Int32(p.maxCandidates),
                                        unclip_ratio: p.unclipRatio, use_dilation: p.useDilation ? 1 : 0,
                                        score_mode_slow: p.scoreModeSlow ? 1 : 0)
        var boxes = [Float](repeating: 0, count: p.maxCandidates * 8)
        let count = try FloatTensor.read(first) { pred in
            boxes.withUnsafeMutableBufferPointer { out in
                vision.dbPostprocess(pred.baseAddress, Int32(shape[2]), Int32(shape[3]), Int32(image.image.height),
                                    Int32(image.image.width), &parameters, out.baseAddress, Int32(p.maxCandidates))
            }
        }
        guard count >= 0 else { throw KernelHTTPError(500, "finding text boxes failed") }
        let quads = (0..<Int(count)).map { index in
            (0..<4).map { point in SIMD2<Float>(boxes[index * 8 + point * 2], boxes[index * 8 + point * 2 + 1]) }
        }
        return OCRText.sortedBoxes(quads)
    }

    static func crop(_ input: PipelineImage, _ boxes: [OCRText.Quad], vision: OCRVisionLibrary) throws -> [OCRImage] {
        try boxes.map { box in
            let points = box.flatMap { [$0.x, $0.y] }
            guard let cropped = points.withUnsafeBufferPointer({ vision.crop(input.image.pointer, $0.baseAddress) }) else {
                throw KernelHTTPError(500, "cropping a text box failed")
            }
            return OCRImage(cropped, vision)
        }
    }

    /// The crops in groups of `batchNum` by increasing width ratio (rapidocr's argsort; a stable sort here), each
    /// group one tensor [n, 3, H, W]: W the configured width, or for recognition (`padToWidest`) the group's widest
    /// ratio times H when that is wider (TextRecognizer's max_wh_ratio). With `rowsPerRequest`, a group's rows
    /// (still at the group's width, so each row's values are what rapidocr computes) are split into tensors of at
    /// most that many rows, each its own request to the model.
    static func batches(_ crops: [OCRImage], shape: [Int], batchNum: Int, rowsPerRequest: Int? = nil, padToWidest: Bool,
                        vision: OCRVisionLibrary) throws -> TensorGroups {
        let ratios = crops.map { Double($0.width) / Double($0.height) }
        let order = ratios.indices.sorted { ratios[$0] < ratios[$1] || (ratios[$0] == ratios[$1] && $0 < $1) }
        let height = shape[1]
        var groups: [[Tensor]] = []
        var items: [[Int]] = []
        var start = 0
        while start < order.count {
            let members = Array(order[start..<min(order.count, start + batchNum)])
            var width = shape[2]
            if padToWidest {
                let maxRatio = members.reduce(Double(shape[2]) / Double(height)) { max($0, ratios[$1]) }
                width = Int(Double(height) * maxRatio)
            }
            let plane = 3 * height * width
            let chunk = rowsPerRequest ?? members.count
            var first = 0
            while first < members.count {
                let rows = Array(members[first..<min(members.count, first + chunk)])
                let tensor = try FloatTensor.make(shape: [rows.count, 3, height, width]) { out in
                    for (row, index) in rows.enumerated() {
                        let status = vision.resizeNormalize(crops[index].pointer, Int32(height), Int32(width), out + row * plane)
                        try OCRVisionError.check(status, maxPixels: 0, header: nil)
                    }
                }
                groups.append([tensor])
                items.append(rows)
                first += chunk
            }
            start += batchNum
        }
        return TensorGroups(groups: groups, items: items, itemCount: crops.count)
    }

    /// ClsPostProcess (arg-max label and its score), and the 180-degree flip above `cls_thresh`.
    static func classify(_ crops: [OCRImage], _ output: TensorGroups, _ p: ClassifierParameters, vision: OCRVisionLibrary) throws -> [OCRImage] {
        var result = crops
        for (group, members) in zip(output.groups, output.items) {
            guard let scores = group.first, scores.shape.count == 2, scores.shape[0] == Int64(members.count),
                  scores.shape[1] >= 1 else {
                throw KernelHTTPError(500, "the direction classifier answered an unexpected shape")
            }
            let classes = Int(scores.shape[1])
            try FloatTensor.read(scores) { values in
                for (row, index) in members.enumerated() {
                    var best = 0
                    for label in 1..<classes where values[row * classes + label] > values[row * classes + best] { best = label }
                    let label = best < p.labelList.count ? p.labelList[best] : ""
                    if label.contains("180"), Double(values[row * classes + best]) > p.thresh {
                        guard let turned = vision.rotated180(crops[index].pointer) else {
                            throw KernelHTTPError(500, "turning a text image failed")
                        }
                        result[index] = OCRImage(turned, vision)
                    }
                }
            }
        }
        return result
    }

    static func ctcDecode(_ output: TensorGroups, characters: [String]) throws -> [RecognizedText] {
        var texts = [RecognizedText](repeating: RecognizedText(text: "", score: 0), count: output.itemCount)
        for (group, members) in zip(output.groups, output.items) {
            guard let probabilities = group.first, probabilities.shape.count == 3,
                  probabilities.shape[0] == Int64(members.count), probabilities.shape[2] > 0 else {
                throw KernelHTTPError(500, "the recognition model answered an unexpected shape")
            }
            let decoded = try FloatTensor.read(probabilities) { values in
                OCRText.ctcDecode(values, rows: members.count, steps: Int(probabilities.shape[1]),
                                  classes: Int(probabilities.shape[2]), characters: characters)
            }
            for (row, index) in members.enumerated() where index < texts.count {
                texts[index] = RecognizedText(text: decoded[row].text, score: decoded[row].score)
            }
        }
        return texts
    }

    /// RapidOCR._get_origin_points (float32, as NumPy computes it) and filter_result.
    static func lines(_ image: PipelineImage, _ boxes: [OCRText.Quad], _ texts: [RecognizedText], textScore: Double) -> [OCRLine] {
        let ratio = SIMD2<Float>(Float(image.ratioWidth), Float(image.ratioHeight))
        let limit = SIMD2<Float>(Float(image.rawWidth), Float(image.rawHeight))
        var lines: [OCRLine] = []
        for (box, text) in zip(boxes, texts) where text.score >= textScore {
            let mapped = box.map { point -> SIMD2<Float> in
                var moved = point
                moved.y -= Float(image.padTop)
                moved *= ratio
                return moved.clamped(lowerBound: .zero, upperBound: limit)
            }
            lines.append(OCRLine(box: mapped, text: text.text, score: text.score))
        }
        return lines
    }
}
