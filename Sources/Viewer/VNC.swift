#if UMDEV_VNC
import VNCShim
#endif
import Glibc

/// A VNC (RFB) server showing one device's screen, on libvncserver.
///
/// The framebuffer it serves is the guest's plane itself when the plane is
/// XRGB8888 (RFB's 32-bit true colour with shifts 16/8/0: no copy), else
/// the watcher's converted buffer. Each refresh marks only the tiles that
/// changed; a new size or format resizes the remote framebuffer (clients
/// with DesktopSize follow). libvncserver serves every client on threads
/// of its own, and nothing here waits for a client: a mode change that
/// finds a client in the middle of a send is retried on the next refresh,
/// and a client that holds one up for two seconds without its send queue
/// shrinking has stopped reading and is disconnected.
public final class VNCOutput {
    /// Whether this build has libvncserver.
    #if UMDEV_VNC
    public static let isAvailable = true
    #else
    public static let isAvailable = false
    #endif

    /// Why VNC output is missing from this build, and how to get it.
    public static let unavailableReason = """
        this umdev was built without libvncserver: install it (apt-get install libvncserver-dev), \
        then rebuild from scratch (rm -rf .build; swift build) so the package picks it up
        """

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    #if UMDEV_VNC
    private let server: OpaquePointer
    #endif
    /// What the server shows now, and what it should show once no client is busy.
    private var shown: (pixels: UnsafeRawPointer, width: Int, height: Int, stride: Int, storage: PixelBuffer?)
    private var pending: (pixels: UnsafeRawPointer, width: Int, height: Int, stride: Int, storage: PixelBuffer?)?
    /// Black pixels shown while the plane is disabled.
    private var blank: PixelBuffer
    private let name: UnsafeMutablePointer<CChar>
    public private(set) var layoutSwitches = 0

    /// Listens on `host`:`port` (IPv4). With `password`, clients must pass
    /// VNC authentication.
    public init(host: String, port: Int, password: String?, name: String, verbose: Bool = false) throws(Failure) {
        self.name = strdup(name)
        blank = PixelBuffer(count: 640 * 480 * 4)
        shown = (UnsafeRawPointer(blank.bytes.baseAddress!), 640, 480, 640 * 4, blank)
        #if UMDEV_VNC
        umdev_vnc_log(verbose ? 1 : 0)
        var error = [CChar](repeating: 0, count: 256)
        let started = umdev_vnc_start(host, Int32(port), password, self.name, shown.pixels, 640, 480, Int32(640 * 4), &error, error.count)
        guard let started else {
            free(self.name)
            throw Failure(description: String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        server = started
        #else
        free(self.name)
        throw Failure(description: Self.unavailableReason)
        #endif
    }

    deinit {
        #if UMDEV_VNC
        umdev_vnc_stop(server)
        #endif
        free(name)
    }

    /// Shows what a watcher poll found. Call from one thread.
    public func show(_ update: ScreenWatcher.Update) {
        guard let frame = update.frame, let pixels = update.pixels else {
            // Nothing on screen: a black screen of the last size.
            if update.layoutChanged || pending != nil || shown.storage !== blank {
                if blank.bytes.count != shown.width * shown.height * 4 { blank = PixelBuffer(count: shown.width * shown.height * 4) }
                pending = (UnsafeRawPointer(blank.bytes.baseAddress!), shown.width, shown.height, shown.width * 4, blank)
                trySwitch()
            }
            return
        }
        let next = (pixels: pixels, width: frame.width, height: frame.height, stride: update.stride, storage: update.storage)
        if update.layoutChanged || pending != nil || next.width != shown.width || next.height != shown.height || next.stride != shown.stride
            || (next.storage != nil && next.storage !== shown.storage) || (next.storage == nil && shown.storage != nil) {
            pending = next
            trySwitch()
            return
        }
        #if UMDEV_VNC
        if next.pixels != shown.pixels {
            umdev_vnc_move(server, next.pixels)
            shown.pixels = next.pixels
        }
        for t in update.changed { umdev_vnc_mark(server, Int32(t.x), Int32(t.y), Int32(t.width), Int32(t.height)) }
        #endif
    }

    /// Switches to `pending` unless a client is busy sending.
    private func trySwitch() {
        guard let p = pending else { return }
        #if UMDEV_VNC
        guard umdev_vnc_show(server, p.pixels, Int32(p.width), Int32(p.height), Int32(p.stride)) != 0 else { return }
        #endif
        shown = p
        pending = nil
        layoutSwitches += 1
    }

    /// Clients connected now.
    public var clients: Int {
        #if UMDEV_VNC
        Int(umdev_vnc_clients(server))
        #else
        0
        #endif
    }

    /// Bytes sent to clients so far.
    public var bytesSent: UInt64 {
        #if UMDEV_VNC
        umdev_vnc_bytes_sent(server)
        #else
        0
        #endif
    }

    /// The size the clients are shown.
    public var size: (width: Int, height: Int) { (shown.width, shown.height) }
}
