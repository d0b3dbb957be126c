// swift-tools-version:6.1
import Foundation
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

/// VNC output needs libvncserver (Debian libvncserver-dev). Without it umdev
/// still builds, and `umdev view --vnc` says how to get it: the rest of
/// umdev must build on a machine that has only the Swift toolchain.
let hasVNC = FileManager.default.fileExists(atPath: "/usr/include/rfb/rfb.h")
let vncTargets: [Target] = hasVNC ? [
    .systemLibrary(name: "CLibVNCServer", path: "Sources/CLibVNCServer", pkgConfig: "libvncserver",
                   providers: [.apt(["libvncserver-dev"])]),
    .target(name: "VNCShim", dependencies: ["CLibVNCServer"], path: "Sources/VNCShim"),
] : []
let vncDependency: [Target.Dependency] = hasVNC ? ["VNCShim"] : []
let vncSettings: [SwiftSetting] = hasVNC ? [.define("UMDEV_VNC")] : []

/// libFuzzer targets (Fuzz/), built only by scripts/fuzz.sh (UMDEV_FUZZ=1,
/// with -sanitize=fuzzer): never part of the normal build.
let fuzzing = ProcessInfo.processInfo.environment["UMDEV_FUZZ"] != nil
let fuzzTargets: [Target] = fuzzing ? [
    .target(name: "FuzzDriver", path: "Fuzz/Driver", swiftSettings: strict),
    .executableTarget(name: "fuzz-codec", dependencies: ["VFIOUser", "FuzzDriver"], path: "Fuzz/Codec", swiftSettings: strict),
    .executableTarget(name: "fuzz-endpoint",
                      dependencies: ["VFIOUserServer", "PCI", "CShim", "TestDevice", "MTTY", "MDPY", "MBochs", "FuzzDriver",
                                     .product(name: "Logging", package: "swift-log")],
                      path: "Fuzz/Endpoint", swiftSettings: strict),
    .executableTarget(name: "fuzz-handover", dependencies: ["Handover", "PCI", "FuzzDriver"], path: "Fuzz/Handover", swiftSettings: strict),
    .executableTarget(name: "fuzz-devices", dependencies: ["PCI", "TestDevice", "MTTY", "MDPY", "MBochs", "FuzzDriver"],
                      path: "Fuzz/Devices", swiftSettings: strict),
] : []

let package = Package(
    name: "umdev",
    products: [
        .executable(name: "umdev", targets: ["umdev"]),
        .executable(name: "umdev-bench", targets: ["umdev-bench"]),
        .executable(name: "vfio-user-conformance", targets: ["vfio-user-conformance"]),
        .library(name: "VFIOUser", targets: ["VFIOUser"]),
        .library(name: "VFIOUserServer", targets: ["VFIOUserServer"]),
        .library(name: "VFIOUserClient", targets: ["VFIOUserClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // The few Linux calls Swift's Glibc module does not import (eventfd,
        // memfd_create, CMSG_* macros), as static inline wrappers.
        .target(name: "CShim", path: "Sources/CShim"),
        // UNIX stream sockets by path (server, client, mtty socket backend).
        .target(name: "UnixSocket", dependencies: ["CShim", "Descriptors", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/UnixSocket", swiftSettings: strict),
        // POSIX threading: a value behind a pthread mutex (ThreadSanitizer sees it;
        // Synchronization.Mutex it does not) and starting a thread.
        .target(name: "Locking", path: "Sources/Locking", swiftSettings: strict),
        // systemd's notification and socket-activation protocol, from the service's side.
        .target(name: "ServiceManager", dependencies: ["CShim"], path: "Sources/ServiceManager", swiftSettings: strict),
        // Heap-allocation counter for umdev-bench only (a malloc interposer:
        // never linked into umdev, which runs on the system allocator untouched).
        .target(name: "CMallocCounter", path: "Sources/CMallocCounter"),
        // What umdev and umdev-bench share on the command line: log options, errors.
        .target(name: "CommandSupport",
                dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/CommandSupport", swiftSettings: strict),

        // Wire types and codec: bytes in, typed values out. No I/O.
        .target(name: "VFIOUser", path: "Sources/VFIOUser", swiftSettings: strict),
        // PCI function: config space, regions, IRQ lines, device-model contract.
        // (the wire's vocabulary, VFIOUser, is re-exported: region and IRQ
        // indices, fourccs and plane kinds are defined there once)
        // Descriptor ownership in the type: OwnedDescriptor over swift-system's FileDescriptor.
        .target(name: "Descriptors", dependencies: [.product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/Descriptors", swiftSettings: strict),
        // The handover format: what a running umdev hands the process that takes over.
        .target(name: "Handover", dependencies: ["PCI", "VFIOUserServer", "CShim", "Descriptors", "Locking", "UnixSocket", "ServiceManager",
                                                 .product(name: "SystemPackage", package: "swift-system"),
                                                 .product(name: "Logging", package: "swift-log")], path: "Sources/Handover", swiftSettings: strict),
        .target(name: "PCI", dependencies: ["CShim", "VFIOUser", "Descriptors", .product(name: "SystemPackage", package: "swift-system")],
                path: "Sources/PCI", swiftSettings: strict),
        // Transport, endpoint, DMA table, migration state machine.
        .target(
            name: "VFIOUserServer",
            dependencies: [
                "VFIOUser", "PCI", "CShim", "UnixSocket", "Locking", "Descriptors",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/VFIOUserServer", swiftSettings: strict),
        .target(
            name: "VFIOUserClient",
            dependencies: [
                "VFIOUser", "CShim", "UnixSocket", "Descriptors",
            ],
            path: "Sources/VFIOUserClient", swiftSettings: strict),

        // libpng (simplified API) for PNG snapshots.
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        // Viewers: reading planes through their mappings, pixel conversion, PNG.
        // (the web page on swift-nio: HTTP/1 and WebSocket on one event loop
        // group, with per-channel writability to drop frames for slow browsers).
        .target(name: "Viewer",
                dependencies: ["VFIOUserClient", "CPNG", "Locking",
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOPosix", package: "swift-nio"),
                               .product(name: "NIOHTTP1", package: "swift-nio"),
                               .product(name: "NIOWebSocket", package: "swift-nio"),
                               .product(name: "Logging", package: "swift-log")] + vncDependency,
                path: "Sources/Viewer",
                resources: [.copy("Resources/viewer.html")],
                swiftSettings: strict + vncSettings),

        // Device models.
        .target(name: "TestDevice", dependencies: ["PCI"], path: "Samples/TestDevice", swiftSettings: strict),
        .target(name: "MTTY", dependencies: ["PCI", "CShim", "UnixSocket"], path: "Samples/MTTY", exclude: ["README.md"], swiftSettings: strict),
        .target(name: "MDPY", dependencies: ["PCI"], path: "Samples/MDPY", exclude: ["README.md"], swiftSettings: strict),
        .target(name: "MBochs", dependencies: ["PCI"], path: "Samples/MBochs", exclude: ["README.md"], swiftSettings: strict),

        // The lifecycle daemon: types and budgets, instances by UUID,
        // definitions, discovery, compatibility, the control socket.
        .target(name: "Lifecycle",
                dependencies: ["PCI", "VFIOUserServer", "UnixSocket", "CShim", "Locking", "TestDevice", "MTTY", "MDPY", "MBochs",
                               "Descriptors", "Handover", "ServiceManager", .product(name: "SystemPackage", package: "swift-system"),
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/Lifecycle", swiftSettings: strict),

        .executableTarget(
            name: "umdev",
            dependencies: [
                "VFIOUser", "VFIOUserServer", "VFIOUserClient", "PCI", "TestDevice", "MTTY", "MDPY", "MBochs",
                "Viewer", "Lifecycle", "CShim", "CommandSupport", "ServiceManager", "UnixSocket", "Descriptors", "Handover", "Locking",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/umdev", swiftSettings: strict),

        // Benchmarks and the scripted guest (play-guest): measuring tools,
        // kept out of the product. Spawns the umdev beside it for servers.
        .executableTarget(
            name: "umdev-bench",
            dependencies: [
                "VFIOUser", "VFIOUserServer", "VFIOUserClient", "PCI", "TestDevice", "MTTY", "MBochs",
                "Viewer", "Lifecycle", "CShim", "CMallocCounter", "CommandSupport", "Locking", "ServiceManager",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/umdev-bench", swiftSettings: strict),

    ] + vncTargets + fuzzTargets + [
        // Independent C conformance suite (shares no code with the Swift server).
        .systemLibrary(name: "CCmocka", path: "Tests/Conformance/CCmocka", pkgConfig: "cmocka",
                       providers: [.apt(["libcmocka-dev"])]),
        .systemLibrary(name: "CJSONC", path: "Tests/Conformance/CJSONC", pkgConfig: "json-c",
                       providers: [.apt(["libjson-c-dev"])]),
        .executableTarget(
            name: "vfio-user-conformance",
            dependencies: ["CCmocka", "CJSONC"],
            path: "Tests/Conformance/suite",
            cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Wno-unused-parameter"])]),

        // What the test targets share (hex test vectors).
        .target(name: "TestSupport", path: "Tests/Support", swiftSettings: strict),
        .testTarget(name: "VFIOUserTests", dependencies: ["VFIOUser"], path: "Tests/VFIOUserTests",
                    swiftSettings: strict),
        .testTarget(name: "HandoverTests", dependencies: ["Handover", "PCI", "MTTY", "MBochs", "VFIOUser", "VFIOUserServer", "CShim"], path: "Tests/HandoverTests",
                    swiftSettings: strict),
        .testTarget(
            name: "ServerTests",
            dependencies: ["VFIOUser", "VFIOUserServer", "VFIOUserClient", "PCI", "TestDevice", "MTTY", "MDPY", "MBochs", "Viewer", "CShim", "UnixSocket", "Lifecycle", "Descriptors", "TestSupport", "ServiceManager", "Handover",
                           .product(name: "SystemPackage", package: "swift-system"),
                           .product(name: "Logging", package: "swift-log")],
            path: "Tests/ServerTests",
            resources: [],
            swiftSettings: strict),
        .testTarget(name: "MTTYTests", dependencies: ["MTTY", "PCI", "CShim", "UnixSocket", "TestSupport"], path: "Tests/MTTYTests",
                    swiftSettings: strict),
        .testTarget(name: "DisplayTests", dependencies: ["MDPY", "MBochs", "PCI", "Viewer", "VFIOUser"], path: "Tests/DisplayTests",
                    swiftSettings: strict),
    ]
)
