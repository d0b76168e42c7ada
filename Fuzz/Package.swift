// swift-tools-version:6.0
// Fuzz targets of the kernel's wire decoders, built apart from the main package because they need
// `-sanitize=fuzzer` (libFuzzer): `Fuzz/fuzz.sh` (or `make fuzz`) builds and runs them for a bounded time.
import PackageDescription

let package = Package(
    name: "kernel-fuzz",
    dependencies: [
        .package(name: "kernel", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "UWSGIDecoderFuzz",
            dependencies: [
                .product(name: "UWSGI", package: "kernel"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
