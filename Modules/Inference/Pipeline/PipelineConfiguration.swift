import KernelConfig
import KernelCore

/// One entry of `inference.pipelines`: named steps, each a built-in operation or a model, run in order for every
/// request; a step reads the values of earlier steps (`input`/`inputs`, by name; the previous step by default).
public struct PipelineConfiguration: Sendable {
    public var name: String
    /// Triton's priority level (1 highest, 0 the model's default) of every model step's requests.
    public var priority: Int
    public var steps: [PipelineStep]
    /// `max_in_flight`: the requests that run the pipeline at once (0: no limit); the others wait, in order,
    /// holding only their uploads, until one ends (`PipelineAdmission`).
    public var maxInFlight = 0
    /// The step whose value is the answer (the last one).
    public var output: Int { steps.count - 1 }

    /// For each step, the last step that reads its value (the answer's own index for the answer): after that step
    /// a run drops the value, so a request holds only what is still to be read (a detection input of megabytes is
    /// gone before recognition starts).
    public var lastReaders: [Int] {
        var last = Array(steps.indices)
        for (index, step) in steps.enumerated() {
            for input in step.inputs where input >= 0 { last[input] = max(last[input], index) }
        }
        last[output] = Int.max
        return last
    }
}

/// A pipeline step: what it does and which earlier steps' values it reads (their indices, in the order written).
public struct PipelineStep: Sendable {
    public var name: String
    public var inputs: [Int]
    public var kind: Kind

    public enum Kind: Sendable {
        case operation(PipelineOperation)
        /// Runs the model through its scheduler (batched with every other request to it).
        case model(String)
    }
}

/// The kinds of values that flow between steps; a step's inputs are checked against them when the configuration
/// loads, so a pipeline that would feed a step the wrong value never starts.
public enum PipelineValueKind: String, Sendable {
    case upload = "the request body"
    case image = "an image"
    case tensors = "model inputs or outputs"
    case boxes = "text boxes"
    case crops = "cropped text images"
    case texts = "recognised texts"
    case lines = "text lines"
}

/// The built-in operations: the steps of rapidocr_onnxruntime, with its parameter names and defaults.
public enum PipelineOperation: Sendable {
    /// The uploaded image decoded (JPEG, PNG, BMP, WebP); `max_pixels` is checked from the header first.
    case decodeImage(maxPixels: Int64)
    /// RapidOCR.preprocess and maybe_add_letterbox.
    case ocrPrepare(OCRPrepareParameters)
    /// TextDetector's DetPreProcess: the detection model's input.
    case detPreprocess(DetPreprocessParameters)
    /// DBPostProcess, filter_tag_det_res and sorted_boxes: boxes from the detection model's output.
    case dbPostprocess(DBPostprocessParameters)
    /// get_crop_img_list: each box warped upright.
    case cropBoxes
    /// TextClassifier's batches of resize_norm_img: the direction classifier's inputs.
    case clsPreprocess(ClassifierParameters)
    /// TextClassifier's flip of the crops classified "180" above `cls_thresh`.
    case clsPostprocess(ClassifierParameters)
    /// TextRecognizer's batches (sorted by width ratio, `rec_batch_num` each, padded to the widest).
    case recPreprocess(RecognizerParameters)
    /// CTCLabelDecode with the character list from the metadata of `model`.
    case ctcDecode(model: String)
    /// The boxes mapped back onto the uploaded image, with their texts, those under `text_score` dropped.
    case ocrLines(textScore: Double)

    /// The operation names written as `op:`.
    public static let names = ["decode_image", "ocr_prepare", "det_preprocess", "db_postprocess", "crop_boxes",
                               "cls_preprocess", "cls_postprocess", "rec_preprocess", "ctc_decode", "ocr_lines"]

    /// What the operation reads, in order, and what it makes.
    var signature: (inputs: [PipelineValueKind], output: PipelineValueKind) {
        switch self {
        case .decodeImage: return ([.upload], .image)
        case .ocrPrepare: return ([.image], .image)
        case .detPreprocess: return ([.image], .tensors)
        case .dbPostprocess: return ([.tensors, .image], .boxes)
        case .cropBoxes: return ([.image, .boxes], .crops)
        case .clsPreprocess: return ([.crops], .tensors)
        case .clsPostprocess: return ([.crops, .tensors], .crops)
        case .recPreprocess: return ([.crops], .tensors)
        case .ctcDecode: return ([.tensors], .texts)
        case .ocrLines: return ([.image, .boxes, .texts], .lines)
        }
    }
}

/// rapidocr's `Global` resizing keys.
public struct OCRPrepareParameters: Sendable {
    public var maxSideLen = 2000
    public var minSideLen = 30
    public var minHeight = 30
    public var widthHeightRatio = 8.0
    /// `max_pixels` (not a rapidocr key): the most pixels an image this step makes may have.
    public var maxPixels = PipelineConfiguration.defaultMaxStepPixels
    public init() {}
}

/// rapidocr's `Det` pre-processing keys.
public struct DetPreprocessParameters: Sendable {
    public var limitSideLen = 736
    /// `limit_type`: "min" or "max".
    public var limitTypeMax = false
    public var mean: [Double] = [0.5, 0.5, 0.5]
    public var std: [Double] = [0.5, 0.5, 0.5]
    /// `max_pixels` (not a rapidocr key): the most pixels the detection input may have.
    public var maxPixels = PipelineConfiguration.defaultMaxStepPixels
    public init() {}
}

/// rapidocr's `Det` post-processing keys.
public struct DBPostprocessParameters: Sendable {
    public var thresh = 0.3
    public var boxThresh = 0.5
    public var maxCandidates = 1000
    public var unclipRatio = 1.6
    public var useDilation = true
    /// `score_mode`: "fast" or "slow".
    public var scoreModeSlow = false
    public init() {}
}

/// rapidocr's `Cls` keys.
public struct ClassifierParameters: Sendable {
    public var imageShape = [3, 48, 192]
    public var batchNum = 6
    /// `rows_per_request`: how many rows of a batch go to the model in one request (nil: the whole batch).
    public var rowsPerRequest: Int?
    public var thresh = 0.9
    public var labelList = ["0", "180"]
    public init() {}
}

/// rapidocr's `Rec` keys.
public struct RecognizerParameters: Sendable {
    public var imageShape = [3, 48, 320]
    public var batchNum = 6
    /// `rows_per_request`: how many rows of a batch (all padded to its widest crop, as rapidocr pads them) go to
    /// the model in one request (nil: the whole batch, rapidocr's one run per batch). The model's scheduler
    /// batches the requests again up to its `max_batch_size`.
    public var rowsPerRequest: Int?
    public init() {}
}

extension PipelineConfiguration {
    /// Pillow's `Image.MAX_IMAGE_PIXELS` (rapidocr decodes with Pillow): the default of `max_pixels`.
    public static let defaultMaxPixels: Int64 = 89_478_485
    /// The default `max_pixels` of `ocr_prepare` and `det_preprocess`: 4096 x 4096. An image rapidocr's steps make
    /// from an ordinary upload is at most about 2000 x 2000 (`max_side_len`); a thin strip of a few bytes grows by
    /// orders of magnitude (2 x 2000 pixels becomes a 736 x 690000 detection input, 6 GB of floats).
    public static let defaultMaxStepPixels: Int64 = 1 << 24

    /// Decodes `inference.pipelines`; model steps must name models of `models`.
    public static func decodeList(_ value: ConfigValue, models: [ModelConfiguration]) throws -> [PipelineConfiguration] {
        var pipelines: [PipelineConfiguration] = []
        for item in try value.list() {
            let pipeline = try decode(item, models: models)
            if pipelines.contains(where: { $0.name == pipeline.name }) {
                throw item.error("pipeline \"\(pipeline.name)\" is declared twice")
            }
            pipelines.append(pipeline)
        }
        return pipelines
    }

    static func decode(_ value: ConfigValue, models: [ModelConfiguration]) throws -> PipelineConfiguration {
        let mapping = try value.mapping()
        let name = try mapping.required("name").nonEmptyString()
        let priority = try mapping.optional("priority")?.int(in: 0...1_000_000, what: "a non-negative integer") ?? 0
        let maxInFlight = try mapping.optional("max_in_flight")?.int(in: 0...1_000_000, what: "a non-negative integer (0: no limit)") ?? 0
        let stepsValue = try mapping.required("steps")
        try mapping.finish()
        var steps: [PipelineStep] = []
        var kinds: [PipelineValueKind] = []
        for item in try stepsValue.list() {
            let step = try decodeStep(item, earlier: steps, kinds: kinds, models: models)
            steps.append(step.step)
            kinds.append(step.output)
        }
        guard !steps.isEmpty else { throw stepsValue.error("a pipeline needs at least one step") }
        var configuration = PipelineConfiguration(name: name, priority: priority, steps: steps)
        configuration.maxInFlight = maxInFlight
        return configuration
    }

    private static func decodeStep(_ value: ConfigValue, earlier: [PipelineStep], kinds: [PipelineValueKind],
                                   models: [ModelConfiguration]) throws -> (step: PipelineStep, output: PipelineValueKind) {
        let mapping = try value.mapping()
        let nameValue = try mapping.required("name")
        let name = try nameValue.nonEmptyString()
        guard name != "request", !earlier.contains(where: { $0.name == name }) else {
            throw nameValue.error("step name \"\(name)\" is used twice (\"request\" names the request body)")
        }
        // Inputs by name: "request" is the uploaded body; by default the previous step (or the request).
        var inputNames: [(String, ConfigValue)] = []
        if let input = mapping.optional("input") { inputNames.append((try input.nonEmptyString(), input)) }
        if let inputs = mapping.optional("inputs") {
            guard inputNames.isEmpty else { throw inputs.error("write either input or inputs") }
            for entry in try inputs.list(allowScalar: true) { inputNames.append((try entry.nonEmptyString(), entry)) }
        }
        var inputs: [Int] = []
        var inputKinds: [PipelineValueKind] = []
        if inputNames.isEmpty {
            inputs = [earlier.count - 1]
            inputKinds = [earlier.isEmpty ? .upload : kinds[earlier.count - 1]]
        }
        for (inputName, inputValue) in inputNames {
            if inputName == "request" {
                inputs.append(-1)
                inputKinds.append(.upload)
            } else if let index = earlier.firstIndex(where: { $0.name == inputName }) {
                inputs.append(index)
                inputKinds.append(kinds[index])
            } else {
                throw inputValue.error("no earlier step is named \"\(inputName)\"")
            }
        }
        let kind: PipelineStep.Kind
        let output: PipelineValueKind
        if let modelValue = mapping.optional("model"), !mapping.contains("op") {
            let model = try modelValue.nonEmptyString()
            guard models.contains(where: { $0.name == model }) else {
                throw modelValue.error("no model \"\(model)\" in inference.models")
            }
            guard inputKinds == [.tensors] else {
                throw value.error("a model step reads model inputs (one step such as det_preprocess), not \(inputKinds.map(\.rawValue).joined(separator: ", "))")
            }
            kind = .model(model)
            output = .tensors
        } else {
            let operation = try decodeOperation(mapping, models: models)
            let signature = operation.signature
            guard inputKinds == signature.inputs else {
                throw value.error("this step reads \(signature.inputs.map(\.rawValue).joined(separator: ", ")), but its inputs give \(inputKinds.map(\.rawValue).joined(separator: ", "))")
            }
            kind = .operation(operation)
            output = signature.output
        }
        try mapping.finish()
        return (PipelineStep(name: name, inputs: inputs, kind: kind), output)
    }

    private static func decodeOperation(_ mapping: ConfigMapping, models: [ModelConfiguration]) throws -> PipelineOperation {
        let opValue = try mapping.required("op")
        let op = try opValue.string()
        func int(_ key: String, _ fallback: Int, _ range: ClosedRange<Int> = 1...1_000_000) throws -> Int {
            try mapping.optional(key)?.int(in: range) ?? fallback
        }
        func number(_ key: String, _ fallback: Double) throws -> Double { try mapping.optional(key)?.double() ?? fallback }
        func numbers(_ key: String, _ fallback: [Double], count: Int) throws -> [Double] {
            guard let value = mapping.optional(key) else { return fallback }
            let list = try value.list().map { try $0.double() }
            guard list.count == count else { throw value.expected("a list of \(count) numbers") }
            return list
        }
        func shape(_ key: String, _ fallback: [Int]) throws -> [Int] {
            guard let value = mapping.optional(key) else { return fallback }
            let list = try value.list().map { try $0.int(in: 1...100_000) }
            guard list.count == 3, list[0] == 3 else { throw value.expected("[3, height, width]") }
            return list
        }
        func choice(_ key: String, _ options: [String], _ fallback: String) throws -> String {
            guard let value = mapping.optional(key) else { return fallback }
            let text = try value.string()
            guard options.contains(text) else { throw value.expected(options.map { "\"\($0)\"" }.joined(separator: " or ")) }
            return text
        }
        func stepPixels(_ fallback: Int64) throws -> Int64 {
            try mapping.optional("max_pixels").map { Int64(try $0.int(in: 1...Int(Int32.max) * 64, what: "a positive integer")) } ?? fallback
        }
        switch op {
        case "decode_image":
            let maxPixels = try mapping.optional("max_pixels")?.int(in: 1...Int(Int32.max) * 64, what: "a positive integer")
            return .decodeImage(maxPixels: Int64(maxPixels ?? Int(defaultMaxPixels)))
        case "ocr_prepare":
            var parameters = OCRPrepareParameters()
            parameters.maxSideLen = try int("max_side_len", parameters.maxSideLen)
            parameters.minSideLen = try int("min_side_len", parameters.minSideLen)
            parameters.minHeight = try int("min_height", parameters.minHeight)
            if let ratio = mapping.optional("width_height_ratio") {
                parameters.widthHeightRatio = try ratio.double()
                guard parameters.widthHeightRatio > 0 || parameters.widthHeightRatio == -1 else {
                    throw ratio.expected("a positive number, or -1 to turn the ratio rule off")
                }
            }
            parameters.maxPixels = try stepPixels(parameters.maxPixels)
            return .ocrPrepare(parameters)
        case "det_preprocess":
            var parameters = DetPreprocessParameters()
            parameters.limitSideLen = try int("limit_side_len", parameters.limitSideLen)
            parameters.limitTypeMax = try choice("limit_type", ["min", "max"], "min") == "max"
            parameters.mean = try numbers("mean", parameters.mean, count: 3)
            parameters.std = try numbers("std", parameters.std, count: 3)
            parameters.maxPixels = try stepPixels(parameters.maxPixels)
            return .detPreprocess(parameters)
        case "db_postprocess":
            var parameters = DBPostprocessParameters()
            parameters.thresh = try number("thresh", parameters.thresh)
            parameters.boxThresh = try number("box_thresh", parameters.boxThresh)
            parameters.maxCandidates = try int("max_candidates", parameters.maxCandidates)
            parameters.unclipRatio = try number("unclip_ratio", parameters.unclipRatio)
            parameters.useDilation = try mapping.optional("use_dilation")?.bool() ?? parameters.useDilation
            parameters.scoreModeSlow = try choice("score_mode", ["fast", "slow"], "fast") == "slow"
            return .dbPostprocess(parameters)
        case "crop_boxes":
            return .cropBoxes
        case "cls_preprocess", "cls_postprocess":
            var parameters = ClassifierParameters()
            parameters.imageShape = try shape("cls_image_shape", parameters.imageShape)
            parameters.batchNum = try int("cls_batch_num", parameters.batchNum)
            parameters.rowsPerRequest = try mapping.optional("rows_per_request")?.int(in: 1...100_000, what: "a positive integer")
            parameters.thresh = try number("cls_thresh", parameters.thresh)
            if let labels = mapping.optional("label_list") {
                parameters.labelList = try labels.list().map { try $0.string() }
                guard !parameters.labelList.isEmpty else { throw labels.expected("a list of labels") }
            }
            return op == "cls_preprocess" ? .clsPreprocess(parameters) : .clsPostprocess(parameters)
        case "rec_preprocess":
            var parameters = RecognizerParameters()
            parameters.imageShape = try shape("rec_img_shape", parameters.imageShape)
            parameters.batchNum = try int("rec_batch_num", parameters.batchNum)
            parameters.rowsPerRequest = try mapping.optional("rows_per_request")?.int(in: 1...100_000, what: "a positive integer")
            return .recPreprocess(parameters)
        case "ctc_decode":
            let modelValue = try mapping.required("model")
            let model = try modelValue.nonEmptyString()
            guard models.contains(where: { $0.name == model }) else {
                throw modelValue.error("no model \"\(model)\" in inference.models")
            }
            return .ctcDecode(model: model)
        case "ocr_lines":
            return .ocrLines(textScore: try number("text_score", 0.5))
        default:
            throw opValue.expected("a model (model: name) or an operation: " + PipelineOperation.names.joined(separator: ", "))
        }
    }
}
