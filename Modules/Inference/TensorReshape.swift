import KernelConfig

/// Triton's `reshape`: a tensor that requests and answers carry with one shape (`dims`) and the model has with
/// another of the same element count (`reshape { shape }`), such as an image classifier served as `[3, 224, 224]`
/// whose graph takes `[1, 3, 224, 224]`. Only the shape changes: the elements are the same, in the same order.
/// With batching, the batch dimension stays in front and only what follows it is reshaped.
public struct TensorReshape: Sendable, Equatable {
    /// The shape requests and answers carry, after the batch dimension when `batched`.
    public let served: [Int64]
    /// The model's own shape, after the batch dimension when `batched`.
    public let model: [Int64]
    public let batched: Bool

    public init(served: [Int64], model: [Int64], batched: Bool) {
        self.served = served
        self.model = model
        self.batched = batched
    }

    /// A configuration's pair, checked as it is read: one free dimension (-1) at most on each side, so that a
    /// concrete shape maps to one shape on the other; equal element counts when both sides are fixed.
    static func check(dims: [Int64], reshape: [Int64], at value: ConfigValue) throws {
        guard dims.filter({ $0 == -1 }).count <= 1, reshape.filter({ $0 == -1 }).count <= 1 else {
            throw value.error("reshape: at most one -1 in dims and one in the reshape's shape, so that each shape maps to one")
        }
        guard let served = product(dims), let model = product(reshape) else {
            throw value.error("reshape: the shapes have more elements than a tensor can")
        }
        let describe = "reshape [\(reshape.map(String.init).joined(separator: ","))] and dims [\(dims.map(String.init).joined(separator: ","))]"
        switch (dims.contains(-1), reshape.contains(-1)) {
        case (false, false) where served != model:
            throw value.error("reshape [\(reshape.map(String.init).joined(separator: ","))] has \(model) elements, dims [\(dims.map(String.init).joined(separator: ","))] \(served)")
        // One side free: the fixed side's elements must be whole multiples of the free side's fixed part.
        case (true, false) where served == 0 || model % served != 0,
             (false, true) where model == 0 || served % model != 0:
            throw value.error("\(describe) cannot hold the same elements")
        default:
            break
        }
    }

    /// `shape`, a concrete served shape, as the model's; nil when its elements cannot take the model's shape.
    public func toModel(_ shape: [Int64]) -> [Int64]? { Self.map(shape, to: model, batched: batched) }

    /// `shape`, a concrete shape the model gave, as the served one; nil when it cannot take the served shape.
    public func toServed(_ shape: [Int64]) -> [Int64]? { Self.map(shape, to: served, batched: batched) }

    private static func map(_ shape: [Int64], to target: [Int64], batched: Bool) -> [Int64]? {
        if batched, shape.isEmpty { return nil }
        let prefix = batched ? [shape[0]] : []
        guard let count = product(batched ? Array(shape.dropFirst()) : shape) else { return nil }
        guard let free = target.firstIndex(of: -1) else {
            return count == product(target) ? prefix + target : nil
        }
        var others = target
        others.remove(at: free)
        guard let fixed = product(others), fixed > 0, count % fixed == 0 else { return nil }
        var mapped = target
        mapped[free] = count / fixed
        return prefix + mapped
    }

    /// The element count of `dims` (a -1 counts as 1); nil when it overflows.
    private static func product(_ dims: [Int64]) -> Int64? {
        var total: Int64 = 1
        for dimension in dims where dimension != -1 {
            let (next, overflow) = total.multipliedReportingOverflow(by: dimension)
            if overflow { return nil }
            total = next
        }
        return total
    }
}

/// A model whose configuration reshapes some of its tensors (`TensorReshape`): each run's inputs get the model's
/// shapes before it and its outputs the served shapes after it. Nothing is copied.
final class ReshapingRunner: ModelRunner {
    private let base: any ModelRunner
    /// By the model's input and output order; nil where a tensor keeps its shape.
    private let inputs: [TensorReshape?]
    private let outputs: [TensorReshape?]

    init(base: any ModelRunner, inputs: [TensorReshape?], outputs: [TensorReshape?]) {
        self.base = base
        self.inputs = inputs
        self.outputs = outputs
    }

    func run(_ tensors: [Tensor]) throws -> [Tensor] {
        try served(base.run(model(tensors)))
    }

    func runBatch(_ requests: [[Tensor]], rows: [Int]) throws -> BatchRun {
        var run = try base.runBatch(requests.map(model), rows: rows)
        run.outputs = try run.outputs.map(served)
        return run
    }

    private func model(_ tensors: [Tensor]) throws -> [Tensor] {
        try Self.apply(inputs, to: tensors) { reshape, shape in reshape.toModel(shape) }
    }

    private func served(_ tensors: [Tensor]) throws -> [Tensor] {
        try Self.apply(outputs, to: tensors) { reshape, shape in reshape.toServed(shape) }
    }

    private static func apply(_ reshapes: [TensorReshape?], to tensors: [Tensor],
                              _ map: (TensorReshape, [Int64]) -> [Int64]?) throws -> [Tensor] {
        var tensors = tensors
        for index in tensors.indices where index < reshapes.count {
            guard let reshape = reshapes[index] else { continue }
            guard let shape = map(reshape, tensors[index].shape) else {
                throw ONNXRuntimeError("tensor of shape [\(tensors[index].shape.map(String.init).joined(separator: ","))] cannot be reshaped between [\(reshape.served.map(String.init).joined(separator: ","))] and [\(reshape.model.map(String.init).joined(separator: ","))]")
            }
            tensors[index].shape = shape
        }
        return tensors
    }
}
