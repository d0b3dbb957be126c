import CShim
import Glibc

/// Device memory the client can map: a memfd of `size` bytes, mapped into
/// this process too. Pages are committed only when touched.
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

    /// Zeroes the memory and gives its pages back to the kernel.
    public func clear() {
        _ = madvise(base, size, MADV_REMOVE)
        memset(base, 0, size)
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }
}
