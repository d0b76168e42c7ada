// swift-tools-version:6.0
// The kernel: one executable, one library target per folder. Modules live under Modules/<Name>.
import PackageDescription

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
]
let log: Target.Dependency = .product(name: "Logging", package: "swift-log")
let locks: Target.Dependency = .product(name: "NIOConcurrencyHelpers", package: "swift-nio")
let embedded: Target.Dependency = .product(name: "NIOEmbedded", package: "swift-nio")
// swift-metrics: the API modules record their metrics with; the Metrics module backs it with swift-prometheus.
let coreMetrics: Target.Dependency = .product(name: "CoreMetrics", package: "swift-metrics")

let package = Package(
    name: "kernel",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "kernel", targets: ["Kernel"]),
        // The decoders as libraries: the fuzz package (Fuzz/) links them.
        .library(name: "UWSGI", targets: ["UWSGI"]),
        .library(name: "HTTP", targets: ["HTTP"]),
        .library(name: "Inference", targets: ["Inference"]),
        .library(name: "KernelConfig", targets: ["KernelConfig"]),
        .library(name: "KernelCore", targets: ["KernelCore"]),
        .library(name: "KernelUpstream", targets: ["KernelUpstream"]),
        .library(name: "Routing", targets: ["Routing"]),
        .library(name: "Balancing", targets: ["Balancing"]),
        .library(name: "CORS", targets: ["CORS"]),
        .library(name: "KernelMetrics", targets: ["KernelMetrics"]),
        // The OCR pipelines' vision shim as its own shared library (libKernelOCRVision.so): the kernel opens it with
        // dlopen only when a configuration has pipelines, so that OpenCV's ~135 libraries stay out of every other
        // process (Modules/Inference/Pipeline/OCRVisionLibrary.swift).
        .library(name: "KernelOCRVision", type: .dynamic, targets: ["COCRVision"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // libyaml, the system C library (Debian: libyaml-dev).
        .systemLibrary(
            name: "CYAML",
            path: "Sources/CYAML",
            pkgConfig: "yaml-0.1",
            providers: [.apt(["libyaml-dev"])]
        ),
        // zlib (Debian: zlib1g-dev): gzip and deflate bodies of the inference protocol, as Triton takes and gives them.
        .systemLibrary(
            name: "CZlib",
            path: "Sources/CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // PCRE2, the regular expressions nginx uses (Debian: libpcre2-dev), with JIT.
        .systemLibrary(
            name: "CPCRE2",
            path: "Sources/CPCRE2",
            pkgConfig: "libpcre2-8",
            providers: [.apt(["libpcre2-dev"])]
        ),
        // OCR pipelines (Modules/Inference/Pipeline): OpenCV's core, imgproc and imgcodecs (Debian:
        // libopencv-{core,imgproc,imgcodecs}-dev, without a pkg-config file of their own: Debian's opencv4.pc comes
        // only with the whole of libopencv-dev) and Clipper (libpolyclipping-dev), behind COCRVision's C API.
        .systemLibrary(
            name: "COpenCV",
            path: "Sources/COpenCV",
            providers: [.apt(["libopencv-core-dev", "libopencv-imgproc-dev", "libopencv-imgcodecs-dev"])]
        ),
        .systemLibrary(
            name: "CPolyclipping",
            path: "Sources/CPolyclipping",
            pkgConfig: "polyclipping",
            providers: [.apt(["libpolyclipping-dev"])]
        ),
        // The shim's C API, header only: the C++ target implements it, Inference imports its types (no `link`).
        .systemLibrary(name: "COCRVisionAPI", path: "Sources/COCRVisionAPI"),
        .target(
            name: "COCRVision",
            dependencies: ["COCRVisionAPI", "COpenCV", "CPolyclipping"],
            path: "Sources/COCRVision",
            // No public headers of its own: the API is COCRVisionAPI's header.
            publicHeadersPath: ".",
            cxxSettings: [.headerSearchPath("../COCRVisionAPI"), .unsafeFlags(["-I/usr/include/opencv4"])],
            // A module map's `link` only autolinks where Swift imports the module; the shim's C++ needs them named.
            // swiftc links the library product and would make it need libswiftCore.so for its startup object alone:
            // the C++ uses no Swift, so no startup files and the static (unreferenced, so empty) runtime leave it
            // free of the toolchain, and it loads where only the installed kernel is.
            linkerSettings: [.linkedLibrary("opencv_core"), .linkedLibrary("opencv_imgproc"),
                             .linkedLibrary("opencv_imgcodecs"), .linkedLibrary("polyclipping"),
                             .unsafeFlags(["-nostartfiles", "-static-stdlib"])]
        ),
        .target(name: "KernelConfig", dependencies: ["CYAML"], path: "Sources/KernelConfig"),
        .target(
            name: "KernelCore",
            dependencies: nio + [
                "KernelConfig", "CPCRE2", log, locks,
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            path: "Sources/KernelCore"
        ),
        // The master process, its worker processes and the control channel between them (`kernel.processes`).
        .target(
            name: "KernelProcesses",
            dependencies: nio + ["KernelCore", "KernelConfig", log, locks,
                                 .product(name: "UnixSignals", package: "swift-service-lifecycle")],
            path: "Sources/KernelProcesses"
        ),
        // The upstream engine every proxying module (uwsgi_pass, proxy_pass) is built on.
        .target(name: "KernelUpstream", dependencies: nio + ["KernelCore", "KernelConfig", log, locks], path: "Sources/KernelUpstream"),

        // Modules: one folder each.
        .target(
            name: "HTTP",
            dependencies: nio + ["KernelCore", "KernelUpstream", "KernelConfig", log],
            path: "Modules/HTTP"
        ),
        .target(
            name: "UWSGI",
            dependencies: nio + ["KernelCore", "KernelUpstream", "KernelConfig", log],
            path: "Modules/UWSGI"
        ),
        .target(
            name: "Inference",
            dependencies: nio + ["KernelCore", "KernelConfig", log, locks, coreMetrics, "COCRVisionAPI", "CZlib",
                                 .product(name: "DequeModule", package: "swift-collections")],
            path: "Modules/Inference"
        ),
        .target(
            name: "Balancing",
            dependencies: nio + ["KernelCore", "KernelConfig", "KernelUpstream", log, locks, coreMetrics],
            path: "Modules/Balancing"
        ),
        .target(
            name: "CORS",
            dependencies: ["KernelCore", "KernelConfig", .product(name: "NIOCore", package: "swift-nio")],
            path: "Modules/CORS"
        ),
        // Prometheus metrics (`metrics:`) and health endpoints (`health:`). Named KernelMetrics: swift-metrics
        // has a module called Metrics.
        .target(
            name: "KernelMetrics",
            dependencies: nio + ["KernelCore", "KernelConfig", log, locks, coreMetrics,
                                 .product(name: "Prometheus", package: "swift-prometheus")],
            path: "Modules/Metrics"
        ),
        .target(
            name: "Routing",
            dependencies: ["KernelCore", "KernelConfig", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "Atomics", package: "swift-atomics")],
            path: "Modules/Routing"
        ),
        .target(
            name: "Status",
            dependencies: ["KernelCore", "KernelConfig", locks, .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "DequeModule", package: "swift-collections"), log],
            path: "Modules/Status"
        ),

        .executableTarget(
            name: "Kernel",
            dependencies: nio + [
                "KernelCore", "KernelConfig", "KernelProcesses", "HTTP", "Balancing", "UWSGI", "Inference", "CORS", "KernelMetrics", "Status", "Routing", log, locks,
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Kernel"
        ),

        // The in-process ceiling of a model for bench/inference (ONNX Runtime in a tight loop).
        .executableTarget(name: "KernelModelBench", dependencies: ["Inference", .product(name: "NIOCore", package: "swift-nio")], path: "Sources/KernelModelBench"),

        .testTarget(name: "KernelConfigTests", dependencies: ["KernelConfig"]),
        .testTarget(name: "BalancingTests", dependencies: ["Balancing", "KernelCore", "KernelConfig", "KernelUpstream", log, embedded,
                                                           .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "CORSTests", dependencies: ["CORS", "Routing", "KernelCore", "KernelConfig", locks,
                                                      .product(name: "NIOCore", package: "swift-nio")]),
        // Each test target declares what it imports, no more.
        .testTarget(name: "KernelCoreTests", dependencies: nio + ["KernelCore", "KernelConfig", log, locks, embedded]),
        .testTarget(name: "KernelProcessesTests", dependencies: nio + ["KernelProcesses", "KernelCore", embedded]),
        .testTarget(name: "KernelUpstreamTests", dependencies: nio + ["KernelUpstream", "KernelCore", log, locks, embedded]),
        .testTarget(name: "HTTPTests", dependencies: nio + ["HTTP", "KernelCore", "KernelUpstream", "KernelConfig", log, locks, embedded]),
        .testTarget(name: "RoutingTests", dependencies: ["Routing", "KernelCore", "KernelConfig", locks,
                                                         .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "UWSGITests", dependencies: nio + ["UWSGI", "KernelCore", "KernelUpstream", log, embedded]),
        .testTarget(name: "StatusTests", dependencies: ["Status", "Routing", "KernelCore", "KernelConfig", log,
                                                        .product(name: "NIOCore", package: "swift-nio")]),
        // The vision shim is the shared library next to the test binary, opened as the kernel opens it: not linked.
        .testTarget(name: "InferenceTests", dependencies: nio + ["Inference", "COCRVisionAPI", "KernelCore", "KernelConfig", log, locks, coreMetrics,
                                                                .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "MetricsTests", dependencies: nio + ["KernelMetrics", "Routing", "KernelCore", "KernelConfig", log, locks, coreMetrics,
                                                              .product(name: "Prometheus", package: "swift-prometheus")]),
        // Tests/SystemTests holds the pytest suites that boot the real `kernel` binary (`make system-test`).
    ],
    swiftLanguageModes: [.v6],
    cxxLanguageStandard: .cxx17
)
