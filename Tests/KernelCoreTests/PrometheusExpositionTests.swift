import XCTest
@testable import KernelCore

final class PrometheusExpositionTests: XCTestCase {
    func testParsesHelpTypeAndLabelledSamples() {
        let families = PrometheusExposition.parse("""
            # HELP kernel_http_requests_total Requests answered.
            # TYPE kernel_http_requests_total counter
            kernel_http_requests_total{server="api",location="/v2",status="200"} 3
            kernel_http_requests_total{server="api",location="/v2",status="404"} 1

            """)
        XCTAssertEqual(families, [
            PrometheusFamily(name: "kernel_http_requests_total", type: "counter", help: "Requests answered.", samples: [
                PrometheusSample(name: "kernel_http_requests_total", labels: ["server": "api", "location": "/v2", "status": "200"], value: 3),
                PrometheusSample(name: "kernel_http_requests_total", labels: ["server": "api", "location": "/v2", "status": "404"], value: 1),
            ]),
        ])
    }

    func testUndoesLabelAndHelpEscapes() {
        let families = PrometheusExposition.parse(#"""
            # HELP odd A \\ backslash and a\nnewline.
            # TYPE odd gauge
            odd{path="C:\\dir",quote="say \"hi\"",line="one\ntwo"} 1
            """#)
        XCTAssertEqual(families.first?.help, "A \\ backslash and a\nnewline.")
        XCTAssertEqual(families.first?.samples.first?.labels, ["path": "C:\\dir", "quote": "say \"hi\"", "line": "one\ntwo"])
    }

    func testReadsInfinitiesNaNExponentsAndDropsTimestamps() {
        let families = PrometheusExposition.parse("""
            # TYPE values gauge
            values{k="a"} +Inf
            values{k="b"} -Inf
            values{k="c"} NaN
            values{k="d"} 1.5e-3 1700000000000
            values{k="e",} 2
            """)
        let values = Dictionary(uniqueKeysWithValues: (families.first?.samples ?? []).map { ($0.labels["k"]!, $0.value) })
        XCTAssertEqual(values["a"], .infinity)
        XCTAssertEqual(values["b"], -.infinity)
        XCTAssertTrue(values["c"]?.isNaN ?? false)
        XCTAssertEqual(values["d"], 0.0015)
        XCTAssertEqual(values["e"], 2, "a trailing comma in the label set is allowed")
    }

    func testHistogramSamplesBelongToTheirFamily() {
        let families = PrometheusExposition.parse("""
            # HELP latency_seconds Latency.
            # TYPE latency_seconds histogram
            latency_seconds_bucket{le="0.1"} 2
            latency_seconds_bucket{le="+Inf"} 3
            latency_seconds_sum 0.35
            latency_seconds_count 3
            # TYPE other_total counter
            other_total 1
            """)
        XCTAssertEqual(families.map(\.name), ["latency_seconds", "other_total"])
        XCTAssertEqual(families[0].type, "histogram")
        XCTAssertEqual(families[0].samples.map(\.name),
                       ["latency_seconds_bucket", "latency_seconds_bucket", "latency_seconds_sum", "latency_seconds_count"])
    }

    func testASumOfAGaugeIsItsOwnFamily() {
        // Only histograms and summaries own `_sum`/`_count` names.
        let families = PrometheusExposition.parse("""
            # TYPE queue gauge
            queue 1
            queue_sum 2
            """)
        XCTAssertEqual(families.map(\.name), ["queue", "queue_sum"])
        XCTAssertEqual(families[1].type, "untyped")
    }

    func testSkipsCommentsAndLinesThatDoNotParse() {
        let families = PrometheusExposition.parse("""
            # a comment
            # EOF
            good 1
            bad{unclosed="x 2
            9starts_with_digit 3
            novalue
            worse{=""} 4
            good_too{a="b"} 5\r
            """)
        XCTAssertEqual(families.map(\.name), ["good", "good_too"])
        XCTAssertEqual(families[1].samples.first?.value, 5)
    }

    func testMergeSumsSamplesWithTheSameNameAndLabels() {
        let worker1 = PrometheusExposition.parse("""
            # HELP requests_total Requests.
            # TYPE requests_total counter
            requests_total{status="200"} 3
            requests_total{status="500"} 1
            # TYPE rss gauge
            rss{worker="1"} 100
            # TYPE latency histogram
            latency_bucket{le="1"} 1
            latency_bucket{le="+Inf"} 2
            latency_sum 3
            latency_count 2
            """)
        let worker2 = PrometheusExposition.parse("""
            # TYPE requests_total counter
            requests_total{status="200"} 4
            # TYPE rss gauge
            rss{worker="2"} 200
            # TYPE latency histogram
            latency_bucket{le="1"} 5
            latency_bucket{le="+Inf"} 5
            latency_sum 1
            latency_count 5
            """)
        let merged = PrometheusExposition.merge([worker1, worker2])
        XCTAssertEqual(merged.map(\.name), ["latency", "requests_total", "rss"])
        func value(_ family: String, _ name: String, _ labels: [String: String]) -> Double? {
            merged.first { $0.name == family }?.samples.first { $0.name == name && $0.labels == labels }?.value
        }
        XCTAssertEqual(value("requests_total", "requests_total", ["status": "200"]), 7)
        XCTAssertEqual(value("requests_total", "requests_total", ["status": "500"]), 1)
        XCTAssertEqual(merged.first { $0.name == "requests_total" }?.help, "Requests.", "help from whichever process gave it")
        XCTAssertEqual(value("rss", "rss", ["worker": "1"]), 100, "per-process gauges keep their worker label")
        XCTAssertEqual(value("rss", "rss", ["worker": "2"]), 200)
        XCTAssertEqual(value("latency", "latency_bucket", ["le": "1"]), 6)
        XCTAssertEqual(value("latency", "latency_bucket", ["le": "+Inf"]), 7)
        XCTAssertEqual(value("latency", "latency_sum", [:]), 4)
        XCTAssertEqual(value("latency", "latency_count", [:]), 7)
    }

    func testMergeIsTheSameWhateverOrderTheAnswersArrive() {
        let a = PrometheusExposition.parse("# TYPE x counter\nx{k=\"a\"} 1\nx{k=\"b\"} 2\n")
        let b = PrometheusExposition.parse("# TYPE x counter\nx{k=\"c\"} 1\nx{k=\"a\"} 2\n")
        XCTAssertEqual(PrometheusExposition.render(PrometheusExposition.merge([a, b])),
                       PrometheusExposition.render(PrometheusExposition.merge([b, a])))
    }

    func testRendersInAStableOrderWithEscapes() {
        let families = [
            PrometheusFamily(name: "zeta", type: "gauge", help: "", samples: [PrometheusSample(name: "zeta", value: 0.25)]),
            PrometheusFamily(name: "alpha_seconds", type: "histogram", help: "Line one\nback\\slash", samples: [
                PrometheusSample(name: "alpha_seconds_count", labels: ["model": "m"], value: 2),
                PrometheusSample(name: "alpha_seconds_bucket", labels: ["model": "m", "le": "+Inf"], value: 2),
                PrometheusSample(name: "alpha_seconds_sum", labels: ["model": "m"], value: 1.5),
                PrometheusSample(name: "alpha_seconds_bucket", labels: ["model": "m", "le": "0.5"], value: 1),
                PrometheusSample(name: "alpha_seconds_bucket", labels: ["le": "+Inf", "model": "a\"b"], value: 0),
            ]),
        ]
        XCTAssertEqual(PrometheusExposition.render(families), #"""
            # HELP alpha_seconds Line one\nback\\slash
            # TYPE alpha_seconds histogram
            alpha_seconds_bucket{le="+Inf",model="a\"b"} 0
            alpha_seconds_bucket{le="0.5",model="m"} 1
            alpha_seconds_bucket{le="+Inf",model="m"} 2
            alpha_seconds_sum{model="m"} 1.5
            alpha_seconds_count{model="m"} 2
            # TYPE zeta gauge
            zeta 0.25

            """#)
    }

    func testRenderRoundTripsThroughParse() {
        let text = #"""
            # HELP kernel_model_batch_size Batch sizes.
            # TYPE kernel_model_batch_size histogram
            kernel_model_batch_size_bucket{le="1",model="demo"} 4
            kernel_model_batch_size_bucket{le="+Inf",model="demo"} 5
            kernel_model_batch_size_sum{model="demo"} 12
            kernel_model_batch_size_count{model="demo"} 5
            # HELP kernel_upstream_peer_up Peer state.
            # TYPE kernel_upstream_peer_up gauge
            kernel_upstream_peer_up{peer="127.0.0.1:9",upstream="a \"quoted\" \\ name\nx"} 0
            # TYPE weird untyped
            weird NaN
            weird{k="inf"} -Inf

            """#
        let families = PrometheusExposition.parse(text)
        XCTAssertEqual(PrometheusExposition.render(families), text)
        let reparsed = PrometheusExposition.parse(PrometheusExposition.render(families))
        XCTAssertEqual(reparsed.map(\.name), families.map(\.name))
        XCTAssertEqual(reparsed[1], families[1])
    }

    func testFormatsValuesAsPrometheusClientsDo() {
        XCTAssertEqual(PrometheusExposition.formatValue(3), "3")
        XCTAssertEqual(PrometheusExposition.formatValue(-2), "-2")
        XCTAssertEqual(PrometheusExposition.formatValue(0.005), "0.005")
        XCTAssertEqual(PrometheusExposition.formatValue(.infinity), "+Inf")
        XCTAssertEqual(PrometheusExposition.formatValue(-.infinity), "-Inf")
        XCTAssertEqual(PrometheusExposition.formatValue(.nan), "NaN")
        XCTAssertEqual(Double(PrometheusExposition.formatValue(1e20)), 1e20)
    }
}
