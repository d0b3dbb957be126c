import CShim
import Glibc
import Locking
import Logging
import PCI
import ServiceManager
import VFIOUserServer

// A device that outlives a crash (issue 18). While umdev runs under a
// service manager that keeps descriptors (`--fd-store`, `--supervise`),
// every descriptor a device is made of sits in the manager's fd store from
// the moment it exists, and the device's state, written as a handover of
// that one device, is kept current in a memfd that is itself in the store.
// A process started after a crash (or a SIGTERM) finds both in
// `$LISTEN_FDS` and resumes every device as of its last answered request.
//
// - Each stored descriptor has a slot, `umdev-d-<n>`; a handover written
//   here numbers its descriptors by slot, so every device's handover
//   indexes one space and the next process joins them into one.
// - A state memfd per device (`umdev-state-<name>`) holds two copies of
//   its handover and a header naming the whole one: a process killed while
//   writing leaves the previous copy readable (a checksum tells).
// - Order: new descriptors are stored before the handover that names them
//   is written; those it no longer names are removed after.

/// The descriptors this process keeps in the service manager's fd store,
/// by slot. One per process: every device's keeper shares it.
public final class StoredDescriptors: @unchecked Sendable {
    // @unchecked: every field is behind `lock`.
    public static let shared = StoredDescriptors()
    /// The fd store's name of slot n is prefix + n.
    public static let prefix = "umdev-d-"
    static func name(_ slot: UInt32) -> String { prefix + "\(slot)" }

    private struct Entry {
        var fd: Int32
        var device: UInt64
        var inode: UInt64
        /// The keeper whose handover names it (nil: taken over, not claimed yet).
        var owner: String?
    }
    private let lock = Locked<State>(State())
    private struct State {
        var slots: [UInt32: Entry] = [:]
        /// Which slot a descriptor number is in now.
        var byFD: [Int32: UInt32] = [:]
        var free: [UInt32] = []
        var next: UInt32 = 0
    }

    /// How many descriptors the store holds for this process now.
    public var count: Int { lock.withLock { $0.slots.count } }

    /// Most descriptors the manager keeps (`$FDSTORE`, FileDescriptorStoreMax=),
    /// when it says: beyond it systemd would drop them, so umdev stores no
    /// more and says so.
    static let limit: Int? = ServiceManager.fdStoreSize

    /// Whether one more descriptor fits under `limit` (slots and state memfds together).
    func hasRoom() -> Bool {
        guard let limit = Self.limit else { return true }
        return lock.withLock { $0.slots.count } + keepers.withLock { $0.count } < limit
    }

    private static func identity(_ fd: Int32) -> (UInt64, UInt64)? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// `fd`'s slot for `owner`: the one it is stored in already (the same
    /// open file, not merely the same number), else a new one, stored now.
    /// Nil when the manager would not take it.
    func slot(for fd: Int32, owner: String) -> UInt32? {
        guard let (dev, ino) = Self.identity(fd) else { return nil }
        return lock.withLock { s -> UInt32? in
            if let slot = s.byFD[fd], var e = s.slots[slot], e.device == dev, e.inode == ino, e.owner == owner || e.owner == nil {
                e.owner = owner
                s.slots[slot] = e
                return slot
            }
            if let limit = Self.limit, s.slots.count + keepers.withLock({ $0.count }) >= limit { return nil }
            let slot: UInt32
            if let f = s.free.popLast() { slot = f } else { slot = s.next; s.next += 1 }
            guard ServiceManager.store(fd, name: Self.name(slot)) else {
                s.free.append(slot)
                return nil
            }
            s.slots[slot] = Entry(fd: fd, device: dev, inode: ino, owner: owner)
            s.byFD[fd] = slot
            return slot
        }
    }

    /// Removes `owner`'s slots but those in `keeping` from the store.
    func release(owner: String, keeping: Set<UInt32>) {
        lock.withLock { s in
            for (slot, e) in s.slots where e.owner == owner && !keeping.contains(slot) {
                ServiceManager.removeStored(name: Self.name(slot))
                s.slots[slot] = nil
                if s.byFD[e.fd] == slot { s.byFD[e.fd] = nil }
                s.free.append(slot)
            }
        }
    }

    /// A descriptor the previous process stored in `slot`, now `fd` here,
    /// until a keeper's handover claims it (`dropUnclaimed`).
    func adopt(slot: UInt32, fd: Int32) {
        guard let (dev, ino) = Self.identity(fd) else { return }
        lock.withLock { s in
            s.slots[slot] = Entry(fd: fd, device: dev, inode: ino, owner: nil)
            s.byFD[fd] = slot
            s.next = max(s.next, slot + 1)
            s.free.removeAll { $0 == slot }
        }
    }

    /// Slots below the highest adopted one that nothing filled, for reuse.
    func settleFree() {
        lock.withLock { s in
            s.free = (0..<s.next).filter { s.slots[$0] == nil }.reversed()
        }
    }

    /// Removes from the store what the previous process left and no device
    /// here claimed (a device that started afresh, a window since gone).
    /// Returns how many.
    @discardableResult
    public func dropUnclaimed() -> Int {
        lock.withLock { s in
            var n = 0
            for (slot, e) in s.slots where e.owner == nil {
                ServiceManager.removeStored(name: Self.name(slot))
                s.slots[slot] = nil
                if s.byFD[e.fd] == slot { s.byFD[e.fd] = nil }
                s.free.append(slot)
                n += 1
            }
            return n
        }
    }

    /// The keepers whose state memfds are stored, by name.
    let keepers = Locked<Set<String>>([])

    /// Every name this process has in the store: what a live upgrade's new
    /// process removes before it stores its own (`forgetPrevious`).
    var allNames: [String] {
        lock.withLock { $0.slots.keys.sorted().map(Self.name) } + keepers.withLock { $0.sorted().map { StateKeeper.statePrefix + $0 } }
    }

    static let previousVariable = "UMDEV_FDSTORE_NAMES"

    /// For a live upgrade's exec: the names, as an environment entry for the new process.
    var namesForNextProcess: String { Self.previousVariable + "=" + allNames.joined(separator: ":") }

    /// In the new process of a live upgrade: what the previous process
    /// stored leaves the store (this one stores its own as it starts
    /// keeping). Not in a check: the old process still serves.
    public static func forgetPrevious(checkOnly: Bool) {
        guard let text = getenv(previousVariable).map({ String(cString: $0) }) else { return }
        unsetenv(previousVariable)
        guard !checkOnly else { return }
        for name in text.split(separator: ":") where ServiceManager.isValidFDName(String(name)) {
            ServiceManager.removeStored(name: String(name))
        }
    }
}

/// One device's (or the daemon's) state, kept current in the fd store: its
/// descriptors by slot and its handover in a state memfd.
public final class StateKeeper: @unchecked Sendable {
    // @unchecked: `save` runs on the thread that holds the device (one at a
    // time, DeviceServer.Keeper); the fields it changes are used nowhere else.
    /// The fd store's name of a keeper's state memfd: prefix + its name.
    public static let statePrefix = "umdev-state-"
    /// The name the keeper stores under ("serve", "daemon", an instance's UUID).
    public let name: String
    private let memfd: Int32
    private let logger: Logger
    /// The handover's device: everything but what `save` is given.
    private let instance: String
    private let host: DeviceHost?
    private let ownsSocketFile: Bool
    private let socketPath: String
    private let preface: () -> [Handover.Section]
    private let display: LiveUpgrade.DisplaySocket?
    private let daemon: LiveUpgrade.DaemonPart?
    /// Where the whole copy is, and how much of the memfd each copy may take.
    private var current: (offset: Int, length: Int)?
    private var copySize = 64 << 10
    private var generation: UInt64 = 0
    /// Held while saving; true once discarded (nothing is saved after).
    private let gate = Locked<Bool>(false)
    /// The last save failed (logged once until one succeeds again).
    private var failing = false

    static let headerSize = 64
    /// Where the copies start: between the header and here, the request
    /// being handled (`notePending`).
    static let dataStart = 64 << 10
    static let magic: UInt32 = 0x5344_4d55 // "UMDS" little-endian
    static let formatVersion: UInt16 = 1

    /// Whether devices keep their state in the fd store (set once at start:
    /// a service manager that keeps descriptors listens).
    nonisolated(unsafe) public static var enabled = false

    private init(name: String, memfd: Int32, logger: Logger, instance: String, host: DeviceHost?, ownsSocketFile: Bool,
                 socketPath: String, preface: @escaping () -> [Handover.Section], display: LiveUpgrade.DisplaySocket?,
                 daemon: LiveUpgrade.DaemonPart?) {
        self.name = name; self.memfd = memfd; self.logger = logger; self.instance = instance; self.host = host
        self.ownsSocketFile = ownsSocketFile; self.socketPath = socketPath; self.preface = preface; self.display = display
        self.daemon = daemon
    }

    /// A keeper for the device `server` serves (`instance`: "" for `umdev
    /// serve`; `preface`: the daemon's instance section), saving from here
    /// on: its state memfd is stored, the server saves through it. Nil
    /// (logged) when the state memfd cannot be made or stored.
    /// A state memfd the fd store brought (`incoming(fromStore:)`) goes on
    /// being the state of the keeper of that name, whether its device was
    /// resumed from it or started afresh.
    public static func keep(_ server: DeviceServer, name: String, instance: String, preface: @escaping () -> [Handover.Section] = { [] },
                            display: LiveUpgrade.DisplaySocket?, logger: Logger) -> StateKeeper? {
        guard let (memfd, adopted) = stateMemfd(name: name, logger: logger) else { return nil }
        let keeper = StateKeeper(name: name, memfd: memfd, logger: logger, instance: instance, host: server.host,
                                 ownsSocketFile: server.ownsSocketFile, socketPath: server.path, preface: preface,
                                 display: display, daemon: nil)
        if adopted { keeper.adoptLayout() }
        server.keepState(with: { [keeper] paused in keeper.save(paused) }, pending: { [keeper] bytes in keeper.notePending(bytes) })
        return keeper
    }

    /// A keeper for the daemon's own part (its control socket), saved once now.
    public static func keep(daemon: LiveUpgrade.DaemonPart, logger: Logger) -> StateKeeper? {
        guard let (memfd, adopted) = stateMemfd(name: "daemon", logger: logger) else { return nil }
        let keeper = StateKeeper(name: "daemon", memfd: memfd, logger: logger, instance: "", host: nil, ownsSocketFile: false,
                                 socketPath: "", preface: { [] }, display: nil, daemon: daemon)
        if adopted { keeper.adoptLayout() }
        keeper.save(nil)
        return keeper
    }

    /// State memfds the fd store brought that no keeper took yet, by name.
    static let unclaimed = Locked<[String: Int32]>([:])

    /// The state memfd for `name`: the one the store brought (adopted), else a new one, stored.
    private static func stateMemfd(name: String, logger: Logger) -> (Int32, Bool)? {
        if let fd = unclaimed.withLock({ $0.removeValue(forKey: name) }) {
            StoredDescriptors.shared.keepers.withLock { _ = $0.insert(name) }
            return (fd, true)
        }
        return storedMemfd(name: name, logger: logger).map { ($0, false) }
    }

    private static func storedMemfd(name: String, logger: Logger) -> Int32? {
        guard StoredDescriptors.shared.hasRoom() else {
            logger.error("cannot keep \(name)'s state for a restart: the fd store is full (FileDescriptorStoreMax=\(StoredDescriptors.limit ?? 0))")
            return nil
        }
        let memfd = umdev_memfd("umdev-state")
        guard memfd >= 0 else {
            logger.error("cannot keep \(name)'s state for a restart: memfd_create: \(String(cString: strerror(errno)))")
            return nil
        }
        guard ServiceManager.store(memfd, name: statePrefix + name) else {
            logger.error("cannot keep \(name)'s state for a restart: the service manager did not take its state memfd")
            close(memfd)
            return nil
        }
        StoredDescriptors.shared.keepers.withLock { _ = $0.insert(name) }
        return memfd
    }

    /// Writes the device's handover as `paused` says it is now (nil: the
    /// daemon's part), its descriptors stored first, then drops from the
    /// store what it no longer names.
    func save(_ paused: DeviceServer.Paused?) {
        gate.withLock { discarded in if !discarded { saveNow(paused) } }
    }

    private func saveNow(_ paused: DeviceServer.Paused?) {
        let owner = name
        var list = DescriptorList { StoredDescriptors.shared.slot(for: $0, owner: owner) }
        let bytes: [UInt8]
        do {
            var devices: [LiveUpgrade.Device] = []
            if let host, let paused {
                devices.append(.init(instance: instance, host: host, paused: paused, ownsSocketFile: ownsSocketFile,
                                     socketPath: socketPath, preface: preface(), display: display))
            }
            bytes = try LiveUpgrade.write(devices, daemon: daemon, into: &list)
        } catch {
            return fail("cannot write its state: \(error.message)")
        }
        guard !list.failed else {
            let full = StoredDescriptors.limit.map { " (or its fd store is full: FileDescriptorStoreMax=\($0))" } ?? ""
            return fail("the service manager did not take one of its descriptors\(full)")
        }
        let slots = list.inventory.map { UInt32($0.index) }
        guard write(bytes) else { return fail("cannot write its state memfd: \(String(cString: strerror(errno)))") }
        StoredDescriptors.shared.release(owner: owner, keeping: Set(slots))
        if failing { logger.notice("\(name)'s state is kept for a restart again"); failing = false }
    }

    private func fail(_ why: String) {
        if !failing { logger.error("\(name) would not survive a crash now: \(why)") }
        failing = true
        // A recorded request whose state was not saved is answered anyway: a restart must not handle it again.
        var zero: UInt64 = 0
        _ = withUnsafeBytes(of: &zero) { pwriteAll($0, at: StateFileHeader.recordOffset) }
    }

    /// Writes `document` beside the whole copy, then points the header at it.
    private func write(_ document: [UInt8]) -> Bool {
        let header = Self.dataStart
        func rounded(_ n: Int) -> Int { (n + 0xffff) & ~0xffff }
        func overlapsCurrent(_ t: Int) -> Bool {
            guard let c = current else { return false }
            return t < c.offset + c.length && c.offset < t + document.count
        }
        if document.count > copySize { copySize = max(rounded(document.count), 2 * copySize) }
        var target = header
        if overlapsCurrent(target) { target = header + copySize }
        if overlapsCurrent(target), let c = current { target = rounded(c.offset + c.length) }
        var st = stat()
        guard fstat(memfd, &st) == 0 else { return false }
        let size = off_t(max(header + 2 * copySize, target + document.count))
        if st.st_size < size, ftruncate(memfd, size) != 0 { return false }
        guard pwriteAll(document, at: target) else { return false }
        generation += 1
        let head = StateFileHeader(generation: generation, offset: UInt64(target), length: UInt64(document.count),
                                   checksum: Self.checksum(document))
        guard pwriteAll(head.encodedCopyFields, at: 0) else { return false }
        current = (target, document.count)
        return true
    }

    private func pwriteAll(_ bytes: [UInt8], at offset: Int) -> Bool {
        bytes.withUnsafeBytes { pwriteAll($0, at: offset) }
    }

    private func pwriteAll(_ b: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        var done = 0
        while done < b.count {
            let n = pwrite(memfd, b.baseAddress! + done, b.count - done, off_t(offset + done))
            if n < 0 { if errno == EINTR { continue }; return false }
            done += n
        }
        return true
    }

    /// Records the bytes of a request about to change the device (and those
    /// read after it) before it is handled, for the next generation: if the
    /// process dies before the state that includes it is saved, the next one
    /// handles them again. Bytes at 64, then their record at 40: generation,
    /// length, checksum. Too long a run of bytes is not recorded.
    func notePending(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count <= Self.dataStart - Self.headerSize else { return }
        gate.withLock { discarded in
            guard !discarded, current != nil, pwriteAll(bytes, at: Self.headerSize) else { return }
            let record = StateFileHeader.encodedRecord(generation: generation + 1, length: UInt64(bytes.count),
                                                       checksum: Self.checksum(bytes))
            _ = pwriteAll(record, at: StateFileHeader.recordOffset)
        }
    }

    /// FNV-1a over the bytes: tells a whole copy from a torn one.
    static func checksum(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { checksum($0) } }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// The request a state memfd's bytes (`file`) record as being handled
    /// when its process died, if its record is whole and for the generation
    /// after the saved copy's; nil otherwise (the copy includes it, or none was).
    public static func pending(inFile file: [UInt8]) -> [UInt8]? {
        guard let h = try? StateFileHeader(file), let record = h.pending, h.generation < UInt64.max,
              record.generation == h.generation + 1, record.length >= UInt64(Header.size),
              record.length <= UInt64(dataStart - headerSize), UInt64(headerSize) + record.length <= UInt64(file.count)
        else { return nil }
        let bytes = Array(file[headerSize..<(headerSize + Int(record.length))])
        return checksum(bytes) == record.checksum ? bytes : nil
    }

    /// The device is gone (stopped, destroyed): its descriptors and state
    /// memfd leave the store.
    /// Call before the device stops, so that a crash meanwhile does not bring it back.
    public func discard() {
        gate.withLock { discarded in
            guard !discarded else { return }
            discarded = true
            StoredDescriptors.shared.release(owner: name, keeping: [])
            ServiceManager.removeStored(name: Self.statePrefix + name)
            StoredDescriptors.shared.keepers.withLock { _ = $0.remove(name) }
            close(memfd)
        }
    }

    // MARK: Reading, in the next process

    /// A state memfd's bytes, all of them (at most two handovers and the header's area).
    static func read(memfd: Int32) throws(DeviceError) -> [UInt8] {
        var st = stat()
        guard fstat(memfd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw DeviceError(EINVAL, "the state is not a memfd") }
        guard st.st_size <= off_t(2 * LiveUpgrade.maxHandover + dataStart) else {
            throw DeviceError(EINVAL, "the state memfd is larger than two handovers")
        }
        var file = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = file.withUnsafeMutableBytes { pread(memfd, $0.baseAddress, $0.count, 0) }
        guard n == file.count else { throw DeviceError(EIO, "reading the state memfd: short read") }
        return file
    }

    /// The copy a state memfd's bytes (`file`, all of them) name in their
    /// header, checked whole: input from another process (fuzzed).
    public static func copy(inFile file: [UInt8]) throws(DeviceError) -> [UInt8] {
        let h = try StateFileHeader(file)
        let offset = h.offset, length = h.length
        guard offset >= UInt64(headerSize), length <= UInt64(LiveUpgrade.maxHandover), offset <= UInt64(file.count),
              length <= UInt64(file.count) - offset else {
            throw DeviceError(EINVAL, "the state memfd's header points outside it")
        }
        let bytes = Array(file[Int(offset)..<Int(offset + length)])
        guard checksum(bytes) == h.checksum else { throw DeviceError(EINVAL, "the state memfd's copy is torn (checksum)") }
        return bytes
    }

    /// What the fd store brought this process (`passed`, from
    /// `$LISTEN_FDS`): every kept device's handover, joined into one, with
    /// the descriptors by slot. Taken out of `passed`; nil when it held no
    /// kept state. A state that cannot be read is logged and left out (its
    /// device starts afresh, or not at all); nothing else is lost. The
    /// state memfds stay in the store for the devices resumed from them.
    public static func incoming(fromStore passed: inout [ServiceManager.ListenedFD], logger: Logger) -> Kept? {
        var states: [(name: String, fd: Int32)] = []
        var slots: [UInt32: Int32] = [:]
        var duplicates: [ServiceManager.ListenedFD] = []
        var duplicatedStates = Set<String>()
        passed.removeAll { p in
            if p.name.hasPrefix(statePrefix) {
                let name = String(p.name.dropFirst(statePrefix.count))
                if states.contains(where: { $0.name == name }) { duplicatedStates.insert(name) }
                states.append((name, p.fd))
                return true
            }
            guard p.name.hasPrefix(StoredDescriptors.prefix) else { return false }
            if let n = UInt32(p.name.dropFirst(StoredDescriptors.prefix.count)), n < 1 << 20 {
                if slots[n] == nil { slots[n] = p.fd } else { duplicates.append(p) }
            } else {
                logger.warning("the fd store holds \(p.name.prefix(64)), not a slot this umdev numbers; removed")
                ServiceManager.removeStored(name: p.name)
                close(p.fd)
            }
            return true
        }
        // A name stored twice: the first is kept, and the store holds it once again.
        for p in duplicates {
            logger.warning("the fd store holds \(p.name.prefix(64)) twice; the second is closed")
            close(p.fd)
        }
        var restore: [(name: String, fd: Int32)] = duplicates.compactMap { p in
            guard let n = UInt32(p.name.dropFirst(StoredDescriptors.prefix.count)), let fd = slots[n] else { return nil }
            return (p.name, fd)
        }
        var seenStates = Set<String>()
        states.removeAll { st in
            guard seenStates.insert(st.name).inserted else {
                logger.warning("the fd store holds the state of \(st.name.prefix(64)) twice; the second is closed")
                close(st.fd)
                return true
            }
            return false
        }
        for (name, fd) in states where duplicatedStates.contains(name) { restore.append((statePrefix + name, fd)) }
        for r in Set(restore.map(\.name)) { ServiceManager.removeStored(name: r) }
        for r in restore { _ = ServiceManager.store(r.fd, name: r.name) }
        guard !states.isEmpty else {
            for (n, fd) in slots { close(fd); ServiceManager.removeStored(name: StoredDescriptors.name(n)) }
            return nil
        }
        let count = Int(slots.keys.max().map { $0 + 1 } ?? 0)
        var fds = [Int32](repeating: -1, count: count)
        for (n, fd) in slots { fds[Int(n)] = fd }
        var sections: [Handover.Section] = []
        var writer: Writer?
        var kept: [String: Int32] = [:]
        var unreadable: [String] = []
        // The daemon's part first: its sections lead, as a daemon's handover has them.
        for (name, memfd) in states.sorted(by: { ($0.name == "daemon" ? "" : "~" + $0.name) < ($1.name == "daemon" ? "" : "~" + $1.name) }) {
            do throws(DeviceError) {
                let file = try read(memfd: memfd)
                var h = try Handover.decode(try copy(inFile: file), descriptorCount: count)
                if let request = pending(inFile: file) {
                    // A request the dead process had read and not answered: its connection handles it again.
                    var replayed = false
                    for (i, s) in h.sections.enumerated() where s.type == SectionType.connection.rawValue {
                        var c = try ConnectionSection(s.payload, descriptorCount: count)
                        c.state.framer = .init(bytes: request, pendingFDs: [], pendingFDOwner: -1, pendingOverflow: false, discard: 0)
                        h.sections[i] = c.section
                        replayed = true
                    }
                    if replayed { logger.notice("\(name): a request the previous process had read and not answered is handled again") }
                }
                for s in h.sections {
                    if s.type == SectionType.writer.rawValue {
                        if writer == nil { writer = try Writer(s.payload) }
                    } else {
                        sections.append(s)
                    }
                }
                kept[name] = memfd
            } catch {
                logger.error("the fd store's state of \(name) is unusable, it starts afresh: \(error.message)")
                unreadable.append(name)
                ServiceManager.removeStored(name: statePrefix + name)
                close(memfd)
            }
        }
        if let w = writer { sections.insert(w.section, at: 0) }
        for (n, fd) in slots { StoredDescriptors.shared.adopt(slot: n, fd: fd) }
        StoredDescriptors.shared.settleFree()
        let pool = DescriptorPool(fds)
        let incoming = LiveUpgrade.Incoming(handover: Handover(sections: sections), pool: pool, checkOnly: false, writer: writer)
        return Kept(incoming: incoming, states: kept, unreadable: unreadable, logger: logger)
    }

    /// The state the fd store brought: one handover of every kept device;
    /// their state memfds wait in `unclaimed` for the keepers (`keep`).
    public final class Kept {
        public let incoming: LiveUpgrade.Incoming
        /// The keepers whose state could not be read.
        public let unreadable: [String]
        private let logger: Logger

        init(incoming: LiveUpgrade.Incoming, states: [String: Int32], unreadable: [String], logger: Logger) {
            self.incoming = incoming; self.unreadable = unreadable; self.logger = logger
            StateKeeper.unclaimed.withLock { $0.merge(states) { _, new in new } }
        }

        /// Once every device is resumed (or started afresh): states and
        /// descriptors nothing claimed leave the store (their devices are gone).
        public func finish() {
            let left = StateKeeper.unclaimed.withLock { u in defer { u = [:] }; return u }
            for (name, memfd) in left {
                logger.notice("the fd store's state of \(name) matched no device here; removed")
                ServiceManager.removeStored(name: StateKeeper.statePrefix + name)
                close(memfd)
            }
            let dropped = StoredDescriptors.shared.dropUnclaimed()
            if dropped > 0 { logger.notice("\(dropped) stored descriptor(s) no device here claimed; removed from the fd store") }
        }
    }

    /// Continues the memfd's layout: the next copy goes beside the whole one.
    private func adoptLayout() {
        var st = stat()
        guard fstat(memfd, &st) == 0 else { return }
        var head = [UInt8](repeating: 0, count: Self.headerSize)
        guard head.withUnsafeMutableBytes({ pread(memfd, $0.baseAddress, $0.count, 0) }) == Self.headerSize else { return }
        guard let h = try? StateFileHeader(head), h.offset <= UInt64(st.st_size), h.length <= UInt64(st.st_size) else { return }
        generation = h.generation
        copySize = max(copySize, (Int(st.st_size) - Self.dataStart) / 2)
        current = (Int(h.offset), Int(h.length))
    }
}

/// A state memfd's first 64 bytes (Protocol/HANDOVER.md, "Kept in the fd
/// store"): magic, format, then which copy is whole (generation, offset,
/// length, checksum) and, at 40, the record of the request being handled
/// (generation, length, checksum; its bytes follow the header). Read and
/// written here only.
struct StateFileHeader {
    static let recordOffset = 40
    var generation: UInt64
    var offset: UInt64
    var length: UInt64
    var checksum: UInt64
    /// The record at 40, when one was written (its generation is not 0).
    var pending: (generation: UInt64, length: UInt64, checksum: UInt64)?

    init(generation: UInt64, offset: UInt64, length: UInt64, checksum: UInt64) {
        self.generation = generation; self.offset = offset; self.length = length; self.checksum = checksum
    }

    /// Reads the header at the start of `file`; throws why it is not one a keeper wrote.
    init(_ file: [UInt8]) throws(DeviceError) {
        guard file.count >= StateKeeper.headerSize else { throw DeviceError(EINVAL, "the state memfd is shorter than its header") }
        var r = StateReader(fields: Array(file[0..<StateKeeper.headerSize]), what: "state memfd header")
        let magic = try r.u32(), version = try r.u16()
        _ = try r.u16()
        guard magic == StateKeeper.magic else { throw DeviceError(EINVAL, "the state memfd holds no state (bad magic)") }
        guard version == StateKeeper.formatVersion else {
            throw DeviceError(EINVAL, "state memfd format \(version); this umdev reads \(StateKeeper.formatVersion)")
        }
        generation = try r.u64(); offset = try r.u64(); length = try r.u64(); checksum = try r.u64()
        let g = try r.u64(), n = try r.u64(), sum = try r.u64()
        pending = g == 0 ? nil : (g, n, sum)
    }

    /// Magic, format and the copy's fields: the 40 bytes before the record.
    var encodedCopyFields: [UInt8] {
        var w = StateWriter()
        w.u32(StateKeeper.magic); w.u16(StateKeeper.formatVersion); w.u16(0)
        w.u64(generation); w.u64(offset); w.u64(length); w.u64(checksum)
        return w.bytes
    }

    /// The 24 bytes of a pending request's record.
    static func encodedRecord(generation: UInt64, length: UInt64, checksum: UInt64) -> [UInt8] {
        var w = StateWriter()
        w.u64(generation); w.u64(length); w.u64(checksum)
        return w.bytes
    }
}
