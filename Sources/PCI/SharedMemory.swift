import CShim
import Descriptors
import Glibc
import Synchronization
import SystemPackage

/// Device memory the client can map: a memfd of `size` bytes, mapped into
/// this process too. Pages are committed only when touched, so a 64 MiB
/// VRAM costs nothing until the guest draws into it.
///
/// The size is sealed: a client holding the descriptor cannot shrink the
/// file under this process's mapping (which would turn a later access here
/// into SIGBUS).
public final class SharedMemory {
    private let descriptor: OwnedDescriptor
    /// The memfd (this object owns it; a reply sends a copy).
    public var fd: FileDescriptor { descriptor.fileDescriptor }
    public let size: Int
    public let base: UnsafeMutableRawPointer

    /// Whether the memory came from a previous process (a live upgrade)
    /// and the next state restore must leave its contents alone: they are
    /// the client's current pages, newer than any saved copy.
    private var keepContentsOnRestore = false
    /// Whether this memory is a previous process's memfd, taken over on a
    /// live upgrade: its contents are the client's current ones, so a
    /// model must not initialise them (paint, clear) when it is built.
    public let wasHandedOver: Bool

    /// True once, for memory that was handed over: what a model's restore
    /// asks before it writes saved contents into the memory.
    public func takeKeepContents() -> Bool {
        defer { keepContentsOnRestore = false }
        return keepContentsOnRestore
    }

    public init(name: String, size: Int) throws(DeviceError) {
        let fd: Int32
        let handedOver: Bool
        if let adopted = MemoryAdoption.claim(name: name, size: size) {
            (fd, handedOver) = (adopted, true)
        } else {
            let made = umdev_memfd(name)
            guard made >= 0 else { throw DeviceError(errno, "memfd_create(\(name)) failed") }
            guard ftruncate(made, off_t(size)) == 0 else {
                let e = errno
                close(made)
                throw DeviceError(e, "ftruncate of \(name) failed")
            }
            guard umdev_memfd_seal_size(made) == 0 else {
                let e = errno
                close(made)
                throw DeviceError(e, "sealing the size of \(name) failed")
            }
            (fd, handedOver) = (made, false)
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw DeviceError(e, "mmap of \(handedOver ? "the handed-over " : "")\(name) failed")
        }
        descriptor = OwnedDescriptor(adopting: FileDescriptor(rawValue: fd))
        self.size = size
        self.base = p
        wasHandedOver = handedOver
        keepContentsOnRestore = handedOver
    }

    deinit {
        munmap(base, size)
    }

    /// Zeroes the memory by giving its pages back to the kernel (later reads
    /// see zeros without committing anything).
    public func clear() {
        if madvise(base, size, MADV_REMOVE) != 0 { memset(base, 0, size) }
    }

    /// Bytes of the file that have pages behind them (st_blocks), i.e. what
    /// the memory really costs; a sparse, untouched memfd reports 0.
    public var committedBytes: Int {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return -1 }
        return Int(st.st_blocks) * 512
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }

    static let pageSize = 4096

    /// The pages that hold anything, for a migration stream: u32 count, then
    /// per page u32 index and its 4096 bytes. Only the file's data ranges are
    /// read (SEEK_DATA/SEEK_HOLE), so an untouched, sparse memory costs
    /// nothing to save and stays sparse.
    ///
    /// Inside `savingForHandover` on the calling thread, the list is only
    /// the marker `contentsTravelAsDescriptor`: the memfd itself goes with
    /// the handover, so copying its pages would only lengthen the pause.
    public func savePages() -> [UInt8] {
        if Self.handoverThread.load(ordering: .relaxed) == UInt(bitPattern: Int(bitPattern: pthread_self())) {
            return withUnsafeBytes(of: Self.contentsTravelAsDescriptor.littleEndian) { Array($0) }
        }
        var out: [UInt8] = [0, 0, 0, 0]
        var count: UInt32 = 0
        let seekData = umdev_seek_data, seekHole = umdev_seek_hole
        var at = lseek(fd.rawValue, 0, seekData)
        while at >= 0 && Int(at) < size {
            let end = min(Int(lseek(fd.rawValue, at, seekHole)), size)
            var page = Int(at) / Self.pageSize
            while page * Self.pageSize < end {
                let bytes = UnsafeRawBufferPointer(start: base + page * Self.pageSize, count: Self.pageSize)
                if bytes.contains(where: { $0 != 0 }) {
                    for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: page >> (8 * i))) }
                    out += bytes
                    count += 1
                }
                page += 1
            }
            if end >= size { break }
            at = lseek(fd.rawValue, off_t(end), seekData)
        }
        for i in 0..<4 { out[i] = UInt8(truncatingIfNeeded: count >> (8 * UInt32(i))) }
        return out
    }

    /// Replaces the whole memory with `savePages` output found at `offset`
    /// of `data`; returns where it ends. Throws on a malformed list,
    /// leaving the memory cleared.
    public func restorePages(_ data: [UInt8], at offset: Int) throws(DeviceError) -> Int {
        guard data.count >= offset + 4 else { throw DeviceError(EINVAL, "memory pages truncated") }
        let count = Int(data[offset]) | Int(data[offset + 1]) << 8 | Int(data[offset + 2]) << 16 | Int(data[offset + 3]) << 24
        let keep = takeKeepContents()
        if count == Int(Self.contentsTravelAsDescriptor) {
            // Only a handover writes it, and only for memory that travels with it.
            guard keep else { throw DeviceError(EINVAL, "the state leaves the memory's contents to a handed-over descriptor this memory did not take") }
            return offset + 4
        }
        if !keep { clear() }
        var at = offset + 4
        guard count <= size / Self.pageSize, data.count >= at + count * (4 + Self.pageSize) else {
            throw DeviceError(EINVAL, "memory pages truncated or too many")
        }
        for _ in 0..<count {
            let page = Int(data[at]) | Int(data[at + 1]) << 8 | Int(data[at + 2]) << 16 | Int(data[at + 3]) << 24
            guard page < size / Self.pageSize else { throw DeviceError(EINVAL, "memory page \(page) beyond the memory") }
            if !keep { data.withUnsafeBytes { (base + page * Self.pageSize).copyMemory(from: $0.baseAddress! + at + 4, byteCount: Self.pageSize) } }
            at += 4 + Self.pageSize
        }
        return at
    }
}

extension SharedMemory {
    /// A page count no memory has: "the contents are in the memfd that
    /// travels with this state" (a live upgrade's handover only).
    public static let contentsTravelAsDescriptor: UInt32 = 0xffff_ffff
    private static let handoverThread = Atomic<UInt>(0)

    /// Runs `body` (which saves device states into a live upgrade's
    /// handover) with every `savePages` on this thread writing the marker
    /// instead of the pages. Other threads (a migration saving meanwhile)
    /// still save the pages.
    public static func savingForHandover<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        handoverThread.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .relaxed)
        defer { handoverThread.store(0, ordering: .relaxed) }
        return try body()
    }
}

/// Memory a previous process handed over on a live upgrade, offered to the
/// device models about to be built: a `SharedMemory` made with the same
/// name and size takes the memfd instead of creating one, so the client's
/// mapping and the guest's data stay what they are.
public enum MemoryAdoption {
    private nonisolated(unsafe) static var offered: [Int32] = []
    private nonisolated(unsafe) static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    /// Runs `body` (which builds the device) with `fds` on offer; returns
    /// its result and the descriptors no memory claimed (the caller's). The
    /// descriptors are given up: claimed ones are the memory's, and on a
    /// throw every one is closed. One offer at a time, process-wide.
    public static func offering<T>(_ fds: [Int32], _ body: () throws(DeviceError) -> T) throws(DeviceError) -> (T, unclaimed: [Int32]) {
        pthread_mutex_lock(lock)
        offered = fds
        defer {
            offered = []
            pthread_mutex_unlock(lock)
        }
        do {
            let value = try body()
            return (value, offered)
        } catch {
            // What was claimed closes with the model that failed; the rest here.
            for fd in offered { close(fd) }
            throw error
        }
    }

    /// The offered memfd made as `name`, `size` bytes long, if any.
    static func claim(name: String, size: Int) -> Int32? {
        guard !offered.isEmpty else { return nil }
        for (i, fd) in offered.enumerated() {
            var st = stat()
            // Sealed as this process seals its own: a previous process's
            // descriptor must not let anyone shrink memory mapped here.
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) == size,
                  memfdName(fd) == name, umdev_memfd_size_sealed(fd) == 1 else { continue }
            offered.remove(at: i)
            return fd
        }
        return nil
    }

    /// The name a memfd was created with (its /proc/self/fd link reads "/memfd:NAME (deleted)").
    static func memfdName(_ fd: Int32) -> String? {
        var buf = [CChar](repeating: 0, count: 512)
        let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let link = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let prefix = "/memfd:", suffix = " (deleted)"
        guard link.hasPrefix(prefix), link.hasSuffix(suffix) else { return nil }
        return String(link.dropFirst(prefix.count).dropLast(suffix.count))
    }
}
