import Foundation
import Glibc
import Lifecycle
import Testing

/// `umdev compat --to TYPE` answers from the catalog, a resume from the
/// model: they must refuse exactly the same streams, for the same reason.
/// Both now ask the model for its identity; this holds them to it.
@Suite("compat against a type answers what a resume into a fresh instance does", .serialized)
struct CompatEqualsResumeTests {
    /// compat of the state file against a type (with attributes), and a
    /// migrate-load of it into a fresh instance of that type.
    func compatAndResume(_ d: TestDaemon, _ state: String, type: String, attrs: [(String, String)] = [])
        throws -> (compat: String?, resume: String?) {
        let fd = open(state, O_RDONLY)
        defer { close(fd) }
        var c = ControlRequest("compat")
        c.type = type
        c.attrs = attrs.isEmpty ? nil : Attributes(attrs)
        let compat = try d.call(c, descriptor: fd)
        #expect(compat.ok, "\(compat.error?.message ?? "")")
        #expect(compat.compatible == (compat.reason == nil))
        let fresh = try d.start(type, attrs: attrs)
        var l = ControlRequest("migrate-load")
        l.uuid = fresh.uuid
        let load = try d.call(l, descriptor: fd)
        _ = try d.stop(fresh.uuid)
        if let e = load.error { #expect(e.code == LifecycleError.Code.incompatible.rawValue, "\(type): \(e.message)") }
        return (compat.reason, load.error?.message)
    }

    func save(_ d: TestDaemon, _ type: String) throws -> String {
        let source = try d.start(type)
        let path = d.root + "/\(type).state"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        var save = ControlRequest("migrate-save")
        save.uuid = source.uuid
        let answer = try d.call(save, descriptor: fd)
        close(fd)
        #expect(answer.ok, "\(answer.error?.message ?? "")")
        _ = try d.stop(source.uuid)
        return path
    }

    @Test("every type: its own state is compatible and resumes; another type's is refused by both alike",
          arguments: Catalog.all.map(\.id))
    func everyType(_ type: String) throws {
        let d = try TestDaemon()
        let ids = Catalog.all.map(\.id)
        let state = try save(d, type)
        let same = try compatAndResume(d, state, type: type)
        #expect(same.compat == nil && same.resume == nil, "\(type) into \(type): \(same)")
        // The next type in the catalog: another model, or the same model with other parameters.
        let other = ids[(ids.firstIndex(of: type)! + 1) % ids.count]
        let refused = try compatAndResume(d, state, type: other)
        #expect(refused.compat != nil, "\(type) into \(other) is compatible?")
        #expect(refused.compat == refused.resume, "\(type) into \(other)")
    }

    @Test("creation attributes count: an mbochs state with another EDID limit is refused alike")
    func attributesCount() throws {
        let d = try TestDaemon()
        let state = try save(d, "mbochs-small")
        let limited = try compatAndResume(d, state, type: "mbochs-small", attrs: [("edid_max", "640x480")])
        #expect(limited.compat?.contains("edid_max") == true, "\(limited)")
        #expect(limited.compat == limited.resume)
    }
}
