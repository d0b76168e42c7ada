/// Box ordering and the recognition model's text decoding, as rapidocr_onnxruntime does them.
public enum OCRText {
    /// The points of a detected box: top-left, top-right, bottom-right, bottom-left, as (x, y).
    public typealias Quad = [SIMD2<Float>]

    /// RapidOCR.sorted_boxes: top to bottom by the first point, then left to right, where boxes whose first points
    /// are less than 10 pixels apart vertically count as one line (its bubble pass, tie rule included).
    public static func sortedBoxes(_ boxes: [Quad]) -> [Quad] {
        // Python's sorted() is stable: ties keep detection order.
        var sorted = boxes.enumerated().sorted { a, b in
            let (pa, pb) = (a.element[0], b.element[0])
            if pa.y != pb.y { return pa.y < pb.y }
            if pa.x != pb.x { return pa.x < pb.x }
            return a.offset < b.offset
        }.map(\.element)
        guard sorted.count > 1 else { return sorted }
        for i in 0..<(sorted.count - 1) {
            var j = i
            while j >= 0 {
                if abs(sorted[j + 1][0].y - sorted[j][0].y) < 10, sorted[j + 1][0].x < sorted[j][0].x {
                    sorted.swapAt(j, j + 1)
                    j -= 1
                } else {
                    break
                }
            }
        }
        return sorted
    }

    /// CTCLabelDecode.get_character: the model's list (its metadata `character`, split as Python's splitlines())
    /// with "blank" in front (index 0, CTC's blank) and a space at the end.
    public static func characterList(metadata: String) -> [String] {
        var characters = ["blank"]
        characters.append(contentsOf: splitLines(metadata))
        characters.append(" ")
        return characters
    }

    /// Python's str.splitlines(): the line boundaries it knows, no empty last line for a trailing boundary.
    static func splitLines(_ text: String) -> [String] {
        let boundaries: Set<Unicode.Scalar> = ["\n", "\r", "\u{0B}", "\u{0C}", "\u{1C}", "\u{1D}", "\u{1E}", "\u{85}",
                                              "\u{2028}", "\u{2029}"]
        var lines: [String] = []
        var current = String.UnicodeScalarView()
        var scalars = text.unicodeScalars.makeIterator()
        var pending = scalars.next()
        while let scalar = pending {
            pending = scalars.next()
            if boundaries.contains(scalar) {
                if scalar == "\r", pending == "\n" { pending = scalars.next() }
                lines.append(String(current))
                current = String.UnicodeScalarView()
            } else {
                current.append(scalar)
            }
        }
        if !current.isEmpty { lines.append(String(current)) }
        return lines
    }

    /// CTCLabelDecode: per row of `probabilities` (`rows` x `steps` x `classes`, row-major), the arg-max class of
    /// each step, repeats merged, blanks (0) dropped; the score is the mean of the kept steps' maxima (0 when none).
    public static func ctcDecode(_ probabilities: UnsafeBufferPointer<Float>, rows: Int, steps: Int, classes: Int,
                                 characters: [String]) -> [(text: String, score: Double)] {
        var results: [(text: String, score: Double)] = []
        results.reserveCapacity(rows)
        for row in 0..<rows {
            var text = ""
            var sum = 0.0
            var kept = 0
            var previous = -1
            for step in 0..<steps {
                let base = (row * steps + step) * classes
                var best = 0
                var bestValue = probabilities[base]
                for index in 1..<classes where probabilities[base + index] > bestValue {
                    // np.argmax: the first of equal maxima.
                    best = index
                    bestValue = probabilities[base + index]
                }
                defer { previous = best }
                guard best != previous, best != 0 else { continue }
                if best < characters.count { text += characters[best] }
                sum += Double(bestValue)
                kept += 1
            }
            results.append((text, kept > 0 ? sum / Double(kept) : 0))
        }
        return results
    }
}
