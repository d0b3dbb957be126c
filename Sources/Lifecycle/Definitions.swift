import Foundation
import Glibc

/// A persistent device definition, in mdevctl's format:
/// `{"mdev_type": "mtty-2", "start": "auto"|"manual", "attrs": [{"port0": "pty"}]}`.
public struct Definition: Codable, Equatable, Sendable {
    public var type: String
    public var start: Start
    public var attributes: Attributes

    public enum Start: String, Codable, Sendable { case auto, manual }

    enum CodingKeys: String, CodingKey { case type = "mdev_type", start, attributes = "attrs" }

    public init(type: String, start: Start, attributes: Attributes) {
        self.type = type; self.start = start; self.attributes = attributes
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        type = try c.decode(String.self, forKey: .type)
        start = try c.decodeIfPresent(Start.self, forKey: .start) ?? .manual
        attributes = try c.decodeIfPresent(Attributes.self, forKey: .attributes) ?? Attributes()
    }
}

/// Definitions on disk: one JSON file per UUID, `CONFIG-DIR/UUID.json`.
/// Writes are atomic (a temporary file, fsync, rename, fsync of the
/// directory), so a crash leaves the old definition or the new one.
public struct DefinitionStore: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    func path(_ uuid: String) -> String { "\(directory)/\(uuid).json" }

    /// Every readable definition, and the files that could not be read, each with the reason.
    public func load() -> (definitions: [String: Definition], skipped: [(file: String, reason: String)]) {
        var out: [String: Definition] = [:]
        var skipped: [(String, String)] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names.sorted() where name.hasSuffix(".json") && !name.hasPrefix(".") {
            let uuid = String(name.dropLast(5))
            let file = "\(directory)/\(name)"
            guard let canonical = UUIDs.canonical(uuid), canonical == uuid else {
                skipped.append((file, "the file name is not a lowercase UUID")); continue
            }
            do {
                let data = try Data(contentsOf: URL(fileURLWithPath: file))
                guard data.count <= 64 << 10 else { skipped.append((file, "larger than 64 KiB")); continue }
                let d = try JSONDecoder().decode(Definition.self, from: data)
                guard let type = Catalog.type(d.type) else { skipped.append((file, "unknown type \(d.type)")); continue }
                if let problem = Validation.problem(type: type, attributes: d.attributes) { skipped.append((file, problem)); continue }
                out[uuid] = d
            } catch let e as DecodingError {
                skipped.append((file, "not a definition: \(Self.describe(e))"))
            } catch {
                skipped.append((file, "unreadable: \(error.localizedDescription)"))
            }
        }
        return (out, skipped)
    }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case .dataCorrupted(let c): c.debugDescription
        case .keyNotFound(let k, _): "no \(k.stringValue)"
        case .typeMismatch(_, let c), .valueNotFound(_, let c): "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        @unknown default: "\(e)"
        }
    }

    /// Writes `definition` for `uuid`, atomically.
    public func save(_ uuid: String, _ definition: Definition) throws(LifecycleError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? encoder.encode(definition) else { throw LifecycleError(.system, "cannot encode the definition") }
        let temporary = "\(directory)/.\(uuid).json.tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LifecycleError(.system, "cannot write \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(data) + [0x0a]
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == bytes.count, synced == 0, rename(temporary, path(uuid)) == 0 else {
            let e = errno
            unlink(temporary)
            throw LifecycleError(.system, "cannot write \(path(uuid)): \(String(cString: strerror(e)))")
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    public func remove(_ uuid: String) throws(LifecycleError) {
        guard unlink(path(uuid)) == 0 || errno == ENOENT else {
            throw LifecycleError(.system, "cannot remove \(path(uuid)): \(String(cString: strerror(errno)))")
        }
    }
}

/// UUIDs as mdev writes them: 36 characters, printed lowercase.
public enum UUIDs {
    /// The lowercase canonical form, or nil when `s` is not a UUID.
    public static func canonical(_ s: String) -> String? {
        guard s.utf8.count == 36, let u = UUID(uuidString: s) else { return nil }
        return u.uuidString.lowercased()
    }

    public static func random() -> String { UUID().uuidString.lowercased() }
}

/// Checks attributes against a type: known names, acceptable values, and
/// no status attributes (they are read, never given).
enum Validation {
    static func problem(type: DeviceType, attributes: Attributes) -> String? {
        for (name, value) in attributes.list {
            guard let spec = type.attribute(name) else {
                let known = type.attributes.filter { $0.kind != .status }.map(\.name).joined(separator: ", ")
                return "\(type.id) has no attribute \(name) (it has \(known))"
            }
            guard spec.kind != .status else { return "\(name) is a status: it is read, not given" }
            if let problem = spec.problem(with: value) { return "\(name)=\(value): \(problem)" }
        }
        return nil
    }
}
