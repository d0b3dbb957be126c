import Glibc
import PCI
import TestDevice
import TestSupport
import Testing

/// A test-device migration state as umdev wrote it before every model's
/// state went through StateWriter (commit 66a0d8b: u8 version 1, BAR0,
/// BAR2, BAR1, config space; no magic), kept as its non-zero runs.
@Suite("test-device state streams written by earlier umdev still load")
struct TestDeviceStateFixtureTests {
    static let v1Size = 8481
    static let v1Runs: [(Int, String)] = [
        (0, "01"),
        (5, "01"),
        (9, "01"),
        (17, "01020304"),
        (2049, "dead"),
        (4097, "55"),
        (4128, "66"),
        (4161, "1122"),
        (8224, "99f41af01006"),
        (8231, "10"),
        (8233, "01"),
        (8236, "ff"),
        (8249, "01"),
        (8269, "f41a01"),
        (8277, "40"),
        (8286, "01"),
        (8289, "014803"),
        (8293, "08"),
        (8297, "055880"),
        (8313, "116403"),
        (8318, "0c"),
        (8322, "0e"),
        (8325, "09"),
        (8327, "08756d646576"),
    ]

    static var v1: [UInt8] {
        var s = [UInt8](repeating: 0, count: v1Size)
        for (offset, hex) in v1Runs {
            let run = [UInt8](hex: hex)
            s.replaceSubrange(offset..<(offset + run.count), with: run)
        }
        return s
    }

    /// What the state was saved from: these accesses on a fresh device.
    static func source() throws -> TestDevice {
        let a = try TestDevice(mappable: true)
        func w(_ region: Int, _ offset: UInt64, _ bytes: [UInt8]) {
            _ = bytes.withUnsafeBytes { a.write(region: region, offset: offset, data: $0) }
        }
        w(RegionIndex.bar0, 0x10, [1, 2, 3, 4]); w(RegionIndex.bar0, TestDevice.Register.doorbell, [1]); w(RegionIndex.bar0, 0x800, [0xde, 0xad])
        w(RegionIndex.bar1, 0x20, [0x11, 0x22]); w(RegionIndex.bar1, 0xfff, [0x99])
        w(RegionIndex.bar2, 0, [0x55]); w(RegionIndex.bar2, 31, [0x66])
        w(RegionIndex.config, 4, [0x06, 0x00])
        return a
    }

    static func contents(_ d: TestDevice) -> [[UInt8]] {
        [RegionIndex.bar0, RegionIndex.bar1, RegionIndex.bar2, RegionIndex.config].map { index in
            var out = [UInt8](repeating: 0, count: Int(d.regions[index].size))
            _ = out.withUnsafeMutableBytes { d.read(region: index, offset: 0, into: $0) }
            return out
        }
    }

    @Test("a version-1 state loads to the registers and memory it was saved with")
    func version1Loads() throws {
        let d = try TestDevice(mappable: true)
        try d.restoreState(Self.v1, version: 1)
        let expected = Self.contents(try Self.source())
        #expect(Self.contents(d) == expected)
        #expect(expected[0][Int(TestDevice.Register.triggerCount)] == 1 && expected[3][4] == 6, "the fixture is not all zeros")
    }

    @Test("a version-1 state is refused when it is short, long or claims another version")
    func version1Refusals() throws {
        let d = try TestDevice(mappable: true)
        #expect(throws: DeviceError.self) { try d.restoreState(Array(Self.v1.dropLast()), version: 1) }
        #expect(throws: DeviceError.self) { try d.restoreState(Self.v1 + [0], version: 1) }
        var other = Self.v1
        other[0] = 3
        #expect(throws: DeviceError.self) { try d.restoreState(other, version: 1) }
    }

    @Test("today's state round-trips")
    func roundTrip() throws {
        let a = try Self.source()
        let b = try TestDevice(mappable: true)
        let state = a.saveState()
        #expect(Array(state.prefix(6)) == Array("UTST".utf8) + [2, 0], "StateWriter's magic and version open it")
        try b.restoreState(state, version: try #require(a.migrationIdentity).version)
        #expect(throws: DeviceError.self) { try TestDevice(mappable: true).restoreState(state, version: 1) }
        #expect(Self.contents(b) == Self.contents(a))
    }
}
