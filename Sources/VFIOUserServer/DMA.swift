import Descriptors
import Glibc
import PCI
import VFIOUser

/// The DMA windows a client has mapped (DMA_MAP / DMA_UNMAP).
///
/// A window that came with a descriptor is mmapped and reached directly; one
/// without is reached through DMA_READ/DMA_WRITE messages to the client.
/// Windows never overlap, and an unmap must name a window exactly.
public final class DMATable {
    public struct Window {
        public var address: UInt64
        public var size: UInt64
        public var flags: UInt32
        /// Host mapping of the window, or nil when it has no descriptor.
        public var mapping: UnsafeMutableRawPointer?
        /// The descriptor the client sent (kept, so a live upgrade can hand
        /// the same memory to the next process), -1 when none; and the
        /// window's offset in it.
        public var fd: Int32 = -1
        public var fileOffset: UInt64 = 0
        public var readable: Bool { flags & VFIO.dmaMapRead != 0 }
        public var writable: Bool { flags & VFIO.dmaMapWrite != 0 }
        var end: UInt64 { address &+ size }
    }

    /// Sorted by address.
    @exclusivity(unchecked) public private(set) var windows: [Window] = []
    public internal(set) var maxWindows: Int

    init(maxWindows: Int) { self.maxWindows = maxWindows }
    deinit { removeAll() }

    /// Adds a window, mmapping `fd` when there is one; the window keeps the
    /// descriptor until it is unmapped.
    func map(_ m: DMAMap, fd: consuming OwnedDescriptor?) throws(ProtocolError) {
        let end = m.address &+ m.size
        let at = windows.firstIndex { $0.address >= m.address } ?? windows.count
        if at < windows.count, windows[at].address < (end == 0 ? UInt64.max : end) {
            throw ProtocolError(EEXIST, "DMA_MAP overlaps an existing window")
        }
        if at > 0, windows[at - 1].end > m.address || windows[at - 1].end == 0 {
            throw ProtocolError(EEXIST, "DMA_MAP overlaps an existing window")
        }
        guard windows.count < maxWindows else { throw ProtocolError(ENOSPC, "max_dma_maps windows already mapped") }
        var w = Window(address: m.address, size: m.size, flags: m.flags, mapping: nil)
        if let fd {
            guard m.size <= UInt64(Int.max), m.offset <= UInt64(Int64.max) else { throw .invalid("DMA_MAP too large to mmap") }
            var st = stat()
            guard fstat(fd.rawValue, &st) == 0 else { throw ProtocolError(errno, "fstat of DMA descriptor failed") }
            if (st.st_mode & S_IFMT) == S_IFREG, UInt64(st.st_size) < m.offset + m.size {
                throw .invalid("DMA_MAP range lies beyond the end of the file")
            }
            var prot: Int32 = 0
            if m.flags & VFIO.dmaMapRead != 0 { prot |= PROT_READ }
            if m.flags & VFIO.dmaMapWrite != 0 { prot |= PROT_WRITE }
            if prot == 0 { prot = PROT_NONE }
            let p = mmap(nil, Int(m.size), prot, MAP_SHARED, fd.rawValue, off_t(m.offset))
            guard let p, p != MAP_FAILED else { throw ProtocolError(errno == 0 ? EINVAL : errno, "mmap of DMA descriptor failed") }
            w.mapping = p
            w.fd = fd.release().rawValue
            w.fileOffset = m.offset
        }
        windows.insert(w, at: at)
    }

    /// Removes the window at exactly [address, address+size).
    func unmap(address: UInt64, size: UInt64) throws(ProtocolError) {
        guard let i = windows.firstIndex(where: { $0.address == address && $0.size == size }) else {
            throw ProtocolError(ENOENT, "DMA_UNMAP names no mapped window")
        }
        release(windows[i])
        windows.remove(at: i)
    }

    /// Removes every window (UNMAP_ALL, disconnect).
    func removeAll() {
        for w in windows { release(w) }
        windows.removeAll()
    }

    private func release(_ w: Window) {
        if let p = w.mapping { munmap(p, Int(w.size)) }
        if w.fd >= 0 { close(w.fd) }
    }

    /// Adopts a window a previous process mapped (a live upgrade), under
    /// the checks a client's DMA_MAP gets, so a handover cannot bring in
    /// what a client could not. The descriptor is the window's from here.
    func adopt(_ m: DMAMap, fd: consuming OwnedDescriptor?) throws(ProtocolError) {
        try m.check(withDescriptor: fd != nil)
        try map(m, fd: fd)
    }

    /// The window holding all of [iova, iova+count), if any.
    func window(containing iova: UInt64, count: Int) -> Window? {
        guard count > 0 else { return nil }
        let last = iova &+ UInt64(count) &- 1
        guard last >= iova else { return nil }
        // Binary search for the last window starting at or below iova.
        var lo = 0, hi = windows.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if windows[mid].address <= iova { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let w = windows[lo - 1]
        guard last <= w.address &+ (w.size - 1) else { return nil }
        return w
    }
}
