import CShim
import Glibc

/// Device memory the client can map: a memfd of `size` bytes, mapped into
/// this process too. Pages are committed only when touched, so a 64 MiB
/// VRAM costs nothing until the guest draws into it.
///
/// The size is sealed: a client holding the descriptor cannot shrink the
/// file under this process's mapping (which would turn a later access here
/// into SIGBUS).
public final class SharedMemory {
    public let fd: Int32
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
        self.fd = fd
        self.size = size
        self.base = p
    }

    deinit {
        munmap(base, size)
        close(fd)
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
        guard fstat(fd, &st) == 0 else { return -1 }
        return Int(st.st_blocks) * 512
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }
}
