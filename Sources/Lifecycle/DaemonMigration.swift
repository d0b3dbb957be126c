import Glibc
import PCI
import SystemPackage
import VFIOUserServer

// The daemon's migration requests (migrate-save, migrate-load) and the
// compatibility check (compat) they share with `umdev compat`: saved
// device state in and out of files a control client passes.

extension Daemon {
    func migrateSave(_ uuid: String, into file: FileDescriptor) throws(LifecycleError) -> Int {
        let fd = file.rawValue
        let instance = try running(uuid)
        let saved = instance.server.withIdleDevice { host -> Result<[UInt8], DeviceError> in
            do throws(DeviceError) { return .success(try host.saveMigrationState()) } catch { return .failure(error) }
        }
        guard let saved else {
            throw LifecycleError(.busy, "a client holds \(uuid): its VMM migrates it; migrate-save drives an instance no client holds")
        }
        let stream: [UInt8]
        switch saved {
        case .success(let s): stream = s
        case .failure(let e): throw LifecycleError(.system, "cannot save \(uuid): \(e.message)")
        }
        guard ftruncate(fd, 0) == 0, lseek(fd, 0, SEEK_SET) == 0 else {
            throw LifecycleError(.system, "cannot write the state file: \(String(cString: strerror(errno)))")
        }
        var done = 0
        while done < stream.count {
            let n = stream.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw LifecycleError(.system, "cannot write the state file: \(String(cString: strerror(errno)))") }
            done += n
        }
        guard fsync(fd) == 0 else { throw LifecycleError(.system, "cannot write the state file: \(String(cString: strerror(errno)))") }
        logger.notice("saved \(uuid)'s state (\(stream.count) bytes)")
        return stream.count
    }

    func migrateLoad(_ uuid: String, from file: FileDescriptor) throws(LifecycleError) -> Int {
        let instance = try running(uuid)
        let stream = try Self.readAll(file, limit: MigrationMachine.maxStream)
        let source: MigrationIdentity
        do { source = try MigrationMachine.header(stream).0 } catch {
            throw LifecycleError(.invalid, "not a saved state: \(error.message)")
        }
        if let target = instance.identity, let why = target.refusal(of: source, readable: instance.readable) {
            throw LifecycleError(.incompatible, why)
        }
        let loaded = instance.server.withIdleDevice { host -> DeviceError? in
            do throws(DeviceError) { try host.loadMigrationState(stream); return nil } catch { return error }
        }
        guard let loaded else {
            throw LifecycleError(.busy, "a client holds \(uuid): its VMM migrates it; migrate-load drives an instance no client holds")
        }
        if let e = loaded { throw LifecycleError(.invalid, "\(uuid) refused the state: \(e.message)") }
        logger.notice("loaded \(uuid)'s state (\(stream.count) bytes, from \(source))")
        return stream.count
    }

    static func readAll(_ file: FileDescriptor, limit: Int) throws(LifecycleError) -> [UInt8] {
        let fd = file.rawValue
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LifecycleError(.system, "cannot read the state file: \(String(cString: strerror(errno)))") }
        guard st.st_size <= limit else { throw LifecycleError(.invalid, "the state file is larger than \(limit >> 20) MiB") }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < out.count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw LifecycleError(.system, "cannot read the state file: \(String(cString: strerror(errno)))") }
            if n == 0 { out.removeLast(out.count - done); break }
            done += n
        }
        return out
    }

    /// compat: from a running instance (`from`) or a saved state (the
    /// descriptor), to a running instance (`to`) or a type with attributes.
    /// The same rule a resume applies, before any data moves.
    func compat(_ request: ControlRequest, descriptor: FileDescriptor?, into r: inout ControlResponse) throws(LifecycleError) {
        let source: MigrationIdentity
        switch (request.from, descriptor) {
        case (let from?, nil):
            let i = try running(try Self.uuid(from))
            guard let id = i.identity else { throw LifecycleError(.invalid, "\(i.type.id) does not migrate") }
            source = id
        case (nil, let fd?):
            let file = try Self.file(fd, writing: false)
            var head = [UInt8](repeating: 0, count: MigrationMachine.magic.count + 4 + (64 << 10))
            let n = head.withUnsafeMutableBytes { pread(file.rawValue, $0.baseAddress, $0.count, 0) }
            guard n >= 0 else { throw LifecycleError(.system, "cannot read the state file: \(String(cString: strerror(errno)))") }
            do { source = try MigrationMachine.header(Array(head[0..<n])).0 } catch {
                throw LifecycleError(.invalid, "not a saved state: \(error.message)")
            }
        default:
            throw LifecycleError(.invalid, "compat needs one source: from (a running instance's uuid) or a state file's descriptor")
        }
        let target: MigrationIdentity
        let readable: ClosedRange<Int>
        switch (request.to, request.type) {
        case (let to?, nil):
            guard request.attrs == nil else { throw LifecycleError(.invalid, "a running target has its attributes already; attrs go with a type") }
            let i = try running(try Self.uuid(to))
            guard let id = i.identity else { throw LifecycleError(.invalid, "\(i.type.id) does not migrate") }
            (target, readable) = (id, i.readable)
        case (nil, let typeID?):
            guard let type = Catalog.type(typeID) else { throw LifecycleError(.notFound, "no type \(typeID) (see umdev types)") }
            let attrs = request.attrs ?? Attributes()
            if let problem = Validation.problem(type: type, attributes: attrs) { throw LifecycleError(.invalid, problem) }
            (target, readable) = (type.identity(attrs), type.stateVersions)
        default:
            throw LifecycleError(.invalid, "compat needs one target: to (a running instance's uuid) or a type")
        }
        let why = target.refusal(of: source, readable: readable)
        r.compatible = why == nil
        r.reason = why
        r.source = source
        r.target = target
    }
}
