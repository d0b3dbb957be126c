import Glibc
import PCI
import Synchronization
import Testing

@Suite("plane publication across threads")
struct PlanePublisherTests {
    /// A plane whose fields all follow from `n`, so a torn read shows.
    static func plane(_ n: UInt32) -> DisplayPlane {
        DisplayPlane(kind: .dmabuf, fourcc: DRMFormat.xrgb8888 &+ n, width: n, height: n &* 3, stride: n &* 4,
                     size: UInt64(n) * 12, region: Int(n % 7), offset: UInt64(n) << 20, id: n)
    }

    @Test("a reader on another thread sees whole planes only, and the last one at the end")
    func noTornReads() async {
        let publisher = PlanePublisher(kind: .dmabuf)
        publisher.publish(Self.plane(0))
        let done = Atomic<Bool>(false)
        let writes: UInt32 = 200_000
        async let torn: Int = Task.detached {
            var torn = 0, reads = 0
            while !done.load(ordering: .acquiring) || reads == 0 {
                let p = publisher.current()
                if p != Self.plane(p.id) { torn += 1 }
                reads += 1
            }
            return torn
        }.value
        for n in 1...writes { publisher.publish(Self.plane(n)) }
        done.store(true, ordering: .releasing)
        #expect(await torn == 0)
        #expect(publisher.current() == Self.plane(writes))
        #expect(publisher.generation == UInt64(writes) + 1)
    }

    @Test("recent planes are found by id until sixteen newer ids take their slots; disabled ones never")
    func recentByID() {
        let publisher = PlanePublisher(kind: .dmabuf)
        for n in UInt32(1)...20 { publisher.publish(Self.plane(n)) }
        for n in UInt32(1)...4 { #expect(publisher.recent(id: n) == nil) }
        for n in UInt32(5)...20 { #expect(publisher.recent(id: n) == Self.plane(n)) }
        #expect(publisher.recentID(sameLayoutAs: Self.plane(7)) == 7)
        #expect(publisher.recentID(sameLayoutAs: Self.plane(2)) == nil)
        publisher.publish(.disabled(.dmabuf))
        #expect(publisher.recent(id: 0) == nil)
        #expect(publisher.current() == .disabled(.dmabuf))
        #expect(publisher.recent(id: 20) == Self.plane(20))
    }
}
