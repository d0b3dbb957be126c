import SystemPackage

/// A file descriptor this value owns: it is closed when the value goes,
/// unless it is handed on with `release()`. Not copyable, so a descriptor
/// has exactly one owner at a time and the compiler says who.
///
/// Where a function only uses a descriptor someone else owns, it takes
/// swift-system's `FileDescriptor`; where it takes the descriptor over, it
/// takes an `OwnedDescriptor` (`consuming`).
public struct OwnedDescriptor: ~Copyable {
    /// The descriptor, to use while this value holds it.
    public let fileDescriptor: FileDescriptor

    /// Takes over `fd`.
    public init(adopting fd: FileDescriptor) { fileDescriptor = fd }

    /// Takes over the raw descriptor `fd`; nil when it is negative (none).
    public init?(adoptingRaw fd: CInt) {
        guard fd >= 0 else { return nil }
        fileDescriptor = FileDescriptor(rawValue: fd)
    }

    /// The raw descriptor number, for system calls.
    public var rawValue: CInt { fileDescriptor.rawValue }

    /// Gives the descriptor up without closing it: the caller owns it now.
    public consuming func release() -> FileDescriptor {
        let fd = fileDescriptor
        discard self
        return fd
    }

    deinit { try? fileDescriptor.close() }
}

/// The descriptors that arrived with one message, owned together: a
/// handler takes those it keeps, and the rest are closed with the batch.
public struct ReceivedDescriptors: ~Copyable {
    private var fds: [CInt]

    /// Takes over every descriptor in `fds` (negative entries are none).
    public init(adoptingRaw fds: [CInt]) { self.fds = fds }

    /// Takes the `i`th descriptor out of the batch (nil when it was taken already).
    public mutating func take(_ i: Int) -> OwnedDescriptor? {
        guard fds.indices.contains(i) else { return nil }
        defer { fds[i] = -1 }
        return OwnedDescriptor(adoptingRaw: fds[i])
    }

    deinit { for fd in fds where fd >= 0 { try? FileDescriptor(rawValue: fd).close() } }
}

/// A descriptor owned by whoever holds a reference to it, closed when the
/// last one lets go: for results that are copied around (a region's info,
/// a dmabuf's answer), where a non-copyable owner does not fit.
public final class SharedDescriptor: Sendable {
    /// The descriptor, to use while a reference is held.
    public let fileDescriptor: FileDescriptor

    /// Takes over `owned`.
    public init(_ owned: consuming OwnedDescriptor) { fileDescriptor = owned.release() }

    /// Takes over the raw descriptor `fd`; nil when it is negative (none).
    public convenience init?(adoptingRaw fd: CInt) {
        guard let owned = OwnedDescriptor(adoptingRaw: fd) else { return nil }
        self.init(owned)
    }

    /// The raw descriptor number, for system calls.
    public var rawValue: CInt { fileDescriptor.rawValue }

    deinit { try? fileDescriptor.close() }
}
