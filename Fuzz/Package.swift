// swift-tools-version:6.0
// Fuzz targets of the kernel's decoders, built apart from the main package because they need
// `-sanitize=fuzzer` (libFuzzer): `Fuzz/fuzz.sh` (or `make fuzz`) builds and runs them for a bounded time.
// They reach internal parsers with `@testable import`, so `fuzz.sh` builds with `-enable-testing`.
import PackageDescription

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOEmbedded", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
]

let package = Package(
    name: "kernel-fuzz",
    dependencies: [
        .package(name: "kernel", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // libFuzzer's driver and the input-splitting every target uses.
        .target(name: "FuzzSupport"),
        .executableTarget(
            name: "UWSGIDecoderFuzz",
            dependencies: nio + ["FuzzSupport", .product(name: "UWSGI", package: "kernel"),
                                 .product(name: "KernelUpstream", package: "kernel")]
        ),
        .executableTarget(
            name: "HTTPRequestFuzz",
            dependencies: nio + ["FuzzSupport", .product(name: "HTTP", package: "kernel"),
                                 .product(name: "KernelCore", package: "kernel"),
                                 .product(name: "KernelConfig", package: "kernel"),
                                 .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "HTTPResponseFuzz",
            dependencies: nio + ["FuzzSupport", .product(name: "HTTP", package: "kernel"),
                                 .product(name: "KernelUpstream", package: "kernel")]
        ),
        .executableTarget(
            name: "InferenceCodecFuzz",
            dependencies: nio + ["FuzzSupport", .product(name: "Inference", package: "kernel"),
                                 .product(name: "KernelCore", package: "kernel")]
        ),
        .executableTarget(
            name: "ConfigLoaderFuzz",
            dependencies: nio + ["FuzzSupport", .product(name: "KernelConfig", package: "kernel"),
                                 .product(name: "KernelCore", package: "kernel"),
                                 .product(name: "HTTP", package: "kernel"),
                                 .product(name: "Inference", package: "kernel"),
                                 .product(name: "Balancing", package: "kernel"),
                                 .product(name: "CORS", package: "kernel"),
                                 .product(name: "Routing", package: "kernel"),
                                 .product(name: "Logging", package: "swift-log")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
