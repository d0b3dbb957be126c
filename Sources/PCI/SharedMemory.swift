import CShim
import Descriptors
import Glibc
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

    public init(name: String, size: Int) throws(DeviceError) {
        let fd = umdev_memfd(name)
        guard fd >= 0 else { throw DeviceError(errno, "memfd_create(\(name)) failed") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errno
            close(fd)
            throw DeviceError(e, "ftruncate of \(name) failed")
        }
        guard umdev_memfd_seal_size(fd) == 0 else {
            let e = errno
            close(fd)
            throw DeviceError(e, "sealing the size of \(name) failed")
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw DeviceError(e, "mmap of \(name) failed")
        }
        descriptor = OwnedDescriptor(adopting: FileDescriptor(rawValue: fd))
        self.size = size
        self.base = p
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
    public func savePages() -> [UInt8] {
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
        clear()
        var at = offset + 4
        guard count <= size / Self.pageSize, data.count >= at + count * (4 + Self.pageSize) else {
            throw DeviceError(EINVAL, "memory pages truncated or too many")
        }
        for _ in 0..<count {
            let page = Int(data[at]) | Int(data[at + 1]) << 8 | Int(data[at + 2]) << 16 | Int(data[at + 3]) << 24
            guard page < size / Self.pageSize else { throw DeviceError(EINVAL, "memory page \(page) beyond the memory") }
            data.withUnsafeBytes { (base + page * Self.pageSize).copyMemory(from: $0.baseAddress! + at + 4, byteCount: Self.pageSize) }
            at += 4 + Self.pageSize
        }
        return at
    }
}
