// The packet tunnel: a NetworkExtension provider running one Hopwire
// session. iOS starts it (from the app, from Settings, or on demand for
// always-on), gives it a utun interface, and stops it. The session reads
// and writes the utun's descriptor itself; packetFlow is not used.

import Foundation
import NetworkExtension
import os

#if canImport(HopwireCore)
    // When the generated HopwireCore.swift is built as a module of its own
    // (a package or a framework). Compiled into this target, as
    // mobile/README.md describes, it needs no import.
    import HopwireCore
#endif

/// The network to join: your values; there is no default.
enum HopwireNetwork {
    /// DHT peers to join through (`/ip4/…/tcp/…/p2p/…`). Empty: the
    /// session knows no nodes and every connect fails with NoExit.
    static let bootstrap: [String] = []
    /// The ledger hops are paid on (`ip:port`); nil: only free nodes.
    static let ledger: String? = nil
}

final class PacketTunnelProvider: NEPacketTunnelProvider {
    private let log = Logger(subsystem: "net.hopwire.tunnel", category: "provider")
    private let lock = NSLock()
    /// The session: made by startTunnel, taken by stopTunnel or by a
    /// failed start, whichever comes first. Under `lock`.
    private var session: Session?

    override func startTunnel(options: [String: NSObject]?, completionHandler: @escaping (Error?) -> Void) {
        let choice: ConnectOptions
        if let options, let asked = ConnectOptions(startOptions: options) {
            choice = asked
            LastChoice.save(asked)
        } else {
            choice = LastChoice.load()
        }
        let started: Session
        do {
            started = try Session(
                config: sessionConfig(),
                tunnel: UtunTunnel(provider: self),
                protector: ProviderSockets(),
                listener: ReassertingListener(provider: self)
            )
        } catch {
            let failure = TunnelFailure(error)
            log.error("the session did not start: \(failure.localizedDescription, privacy: .public)")
            completionHandler(failure)
            return
        }
        set(started)
        Task {
            do {
                let status = try await started.connect(options: choice)
                self.log.info("connected through \(status.circuit.count) hops")
                completionHandler(nil)
            } catch {
                let failure = TunnelFailure(error)
                self.log.error("connect failed: \(failure.localizedDescription, privacy: .public)")
                // iOS gives up on the tunnel; the session is ended here
                // unless stopTunnel took it meanwhile.
                if self.take(started) {
                    await started.shutdown()
                }
                completionHandler(failure)
            }
        }
    }

    override func stopTunnel(with reason: NEProviderStopReason, completionHandler: @escaping () -> Void) {
        log.info("stopping (reason \(reason.rawValue))")
        guard let stopping = takeSession() else {
            completionHandler()
            return
        }
        Task {
            // Disconnects (after a connect under way has ended), delivers
            // the last events, stops the session's runtime.
            await stopping.shutdown()
            completionHandler()
        }
    }

    override func handleAppMessage(_ messageData: Data, completionHandler: ((Data?) -> Void)?) {
        guard let request = try? JSONDecoder().decode(ProviderRequest.self, from: messageData) else {
            log.error("an app message that is not a ProviderRequest")
            completionHandler?(nil)
            return
        }
        switch request.command {
        case .status:
            // Nothing when no session runs (not started, or stopping).
            let status = try? current()?.status()
            completionHandler?(status.flatMap { try? JSONEncoder().encode(providerStatus($0)) })
        }
    }

    /// The state directory is in the app group's container, created here so
    /// that it can be kept out of backups: it holds the wallet's private key.
    private func sessionConfig() throws -> SessionConfig {
        guard
            let container = FileManager.default.containerURL(
                forSecurityApplicationGroupIdentifier: HopwireShared.appGroup)
        else {
            throw TunnelFailure("the app group \(HopwireShared.appGroup) is not in this extension's entitlements")
        }
        var stateDir = container.appendingPathComponent("hopwire", isDirectory: true)
        try FileManager.default.createDirectory(
            at: stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var noBackup = URLResourceValues()
        noBackup.isExcludedFromBackup = true
        try stateDir.setResourceValues(noBackup)
        var config = SessionConfig(
            stateDir: stateDir.path, bootstrap: HopwireNetwork.bootstrap, ledger: HopwireNetwork.ledger)
        #if DEBUG
            // The session appends to its log and never trims it: debug builds only.
            config.logFilter = "info"
            config.logFile = container.appendingPathComponent("hopwire.log").path
        #endif
        return config
    }

    private func set(_ new: Session) {
        lock.lock()
        defer { lock.unlock() }
        session = new
    }

    /// Takes whichever session runs.
    private func takeSession() -> Session? {
        lock.lock()
        defer { lock.unlock() }
        let running = session
        session = nil
        return running
    }

    /// Takes `expected` if it still runs; false if stopTunnel took it.
    private func take(_ expected: Session) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard session === expected else { return false }
        session = nil
        return true
    }

    private func current() -> Session? {
        lock.lock()
        defer { lock.unlock() }
        return session
    }
}

/// The session's tunnel provider: applies its settings to the packet tunnel
/// and hands over the utun's descriptor.
final class UtunTunnel: TunnelProvider, @unchecked Sendable {
    /// Weak: the provider owns the session, which owns this. Only read.
    private weak var provider: NEPacketTunnelProvider?

    /// A unique-local address (RFC 4193, random prefix) for the interface
    /// when the exit carries no IPv6: see `networkSettings`.
    static let ipv6Placeholder = "fd8e:5c2a:91d4::2"

    init(provider: NEPacketTunnelProvider) {
        self.provider = provider
    }

    func establish(settings: TunnelSettings) throws -> Int32 {
        guard let provider else {
            throw CallbackError.Failed(reason: "the packet tunnel has stopped")
        }
        // Waits until iOS has applied the settings. Blocking is acceptable
        // here only because the session calls establish on a thread of its
        // own runtime, never on a queue iOS needs to deliver the completion.
        let applied = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        provider.setTunnelNetworkSettings(Self.networkSettings(settings)) { error in
            outcome.error = error
            applied.signal()
        }
        guard applied.wait(timeout: .now() + .seconds(30)) == .success else {
            throw CallbackError.Failed(reason: "iOS did not apply the tunnel's network settings within 30 s")
        }
        if let refusal = outcome.error {
            throw CallbackError.Failed(
                reason: "iOS refused the tunnel's network settings: \(refusal.localizedDescription)")
        }
        guard let utun = Self.utunDescriptor() else {
            throw CallbackError.Failed(reason: "no utun descriptor found in the packet tunnel's process")
        }
        // The session owns and closes the descriptor it gets, but the utun
        // is NetworkExtension's (packetFlow's too). A duplicate lets the
        // session close its copy without taking the interface from iOS, and
        // a later establish (a rebuilt circuit with other addresses) hands
        // over a fresh one.
        let copy = dup(utun)
        guard copy >= 0 else {
            throw CallbackError.Failed(reason: "duplicating the utun descriptor: \(String(cString: strerror(errno)))")
        }
        return copy
    }

    /// The session has closed its duplicate; the utun itself goes when iOS
    /// stops the tunnel.
    func teardown() {}

    /// What setTunnelNetworkSettings answered. A box, not a captured var:
    /// the completion may be a @Sendable closure. Written before the
    /// semaphore is signalled, read after it is waited on.
    private final class Outcome: @unchecked Sendable {
        var error: Error?
    }

    static func networkSettings(_ settings: TunnelSettings) -> NEPacketTunnelNetworkSettings {
        // iOS wants a remote address for the interface; the first excluded
        // address is the first hop, the one that means something.
        let network = NEPacketTunnelNetworkSettings(tunnelRemoteAddress: settings.excluded.first ?? "127.0.0.1")
        let routes4 = settings.routes.filter { !isIPv6($0.address) }
        let routes6 = settings.routes.filter { isIPv6($0.address) }
        let excluded4 = settings.excluded.filter { !isIPv6($0) }
        let excluded6 = settings.excluded.filter { isIPv6($0) }

        let ipv4 = NEIPv4Settings(addresses: [settings.innerV4], subnetMasks: ["255.255.255.255"])
        ipv4.includedRoutes = routes4.map { NEIPv4Route(destinationAddress: $0.address, subnetMask: ipv4Mask($0.prefix)) }
        // The first hop and the ledger: the session's own sockets to them
        // bypass the tunnel anyway (see ProviderSockets); the routes keep
        // iOS from ever sending them into it.
        ipv4.excludedRoutes = excluded4.map { NEIPv4Route(destinationAddress: $0, subnetMask: "255.255.255.255") }
        network.ipv4Settings = ipv4

        // Always IPv6 settings with ::/0: IPv6 the exit does not carry then
        // goes into the tunnel and the session drops it, instead of leaving
        // around the tunnel. iOS routes IPv6 into an interface only with an
        // IPv6 address on it, hence the placeholder when there is no inner
        // one; nothing answers it. /120, not /128: with a /128 Apple's stack
        // does not install the ::/0 route (WireGuard's and Firezone's
        // clients clamp to /120 for the same reason).
        let ipv6 = NEIPv6Settings(addresses: [settings.innerV6 ?? ipv6Placeholder], networkPrefixLengths: [120])
        ipv6.includedRoutes = routes6.map {
            NEIPv6Route(destinationAddress: $0.address, networkPrefixLength: NSNumber(value: $0.prefix))
        }
        ipv6.excludedRoutes = excluded6.map { NEIPv6Route(destinationAddress: $0, networkPrefixLength: 128) }
        network.ipv6Settings = ipv6

        if !settings.dns.isEmpty {
            let dns = NEDNSSettings(servers: settings.dns)
            // Every name, not some domains: all lookups go to the tunnel's resolvers.
            dns.matchDomains = [""]
            network.dnsSettings = dns
        }
        network.mtu = NSNumber(value: settings.mtu)
        return network
    }

    /// The utun's descriptor. NetworkExtension does not expose it, so it is
    /// found as WireGuard's and Firezone's clients find it: every descriptor
    /// up to 1024 is asked for its utun interface name (`getsockopt` of
    /// `UTUN_OPT_IFNAME` at level `SYSPROTO_CONTROL`, which only a utun
    /// control socket answers). This needs no kernel-control structures,
    /// which the iOS SDK does not export (the other way, `getpeername` and
    /// `CTLIOCGINFO`, needs them); it exports neither constant either.
    static func utunDescriptor() -> Int32? {
        let sysprotoControl: Int32 = 2  // <sys/sys_domain.h>
        let utunOptIfname: Int32 = 2  // <net/if_utun.h>
        var name = [CChar](repeating: 0, count: Int(IFNAMSIZ))
        for fd: Int32 in 0...1024 {
            var length = socklen_t(name.count)
            guard getsockopt(fd, sysprotoControl, utunOptIfname, &name, &length) == 0 else { continue }
            let interface = name.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            if interface.hasPrefix("utun") {
                return fd
            }
        }
        return nil
    }

    private static func isIPv6(_ address: String) -> Bool {
        address.contains(":")
    }

    /// `prefix` as a dotted IPv4 mask (24 → 255.255.255.0).
    private static func ipv4Mask(_ prefix: UInt8) -> String {
        let bits: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(min(prefix, 32)))
        return [24, 16, 8, 0].map { String((bits >> $0) & 0xff) }.joined(separator: ".")
    }
}

/// Lets every socket of the session through: iOS never sends a packet
/// tunnel provider's own traffic into its tunnel, so there is nothing to do
/// for one (Android's VpnService.protect has no counterpart here).
final class ProviderSockets: SocketProtector {
    func protect(fd: Int32) -> Bool {
        true
    }
}

/// Tells iOS while the session rebuilds a lost circuit: `reasserting`
/// shows the tunnel as connecting again, in Settings and to the app.
final class ReassertingListener: EventListener, @unchecked Sendable {
    /// Weak: the provider owns the session, which owns this. Only read.
    private weak var provider: NEPacketTunnelProvider?

    init(provider: NEPacketTunnelProvider) {
        self.provider = provider
    }

    func onEvent(event: Event) {
        guard case let .state(state) = event else { return }
        switch state {
        case .reconnecting:
            provider?.reasserting = true
        case .connected:
            provider?.reasserting = false
        case .disconnected, .connecting, .error:
            break
        }
    }
}

/// The choice the tunnel was last started with, for starts that carry none
/// (on demand, Settings): the app group's defaults.
private enum LastChoice {
    private static let country = "lastChoice.country"
    private static let hops = "lastChoice.hops"
    private static let maxPricePerGib = "lastChoice.maxPricePerGib"

    private static var defaults: UserDefaults {
        UserDefaults(suiteName: HopwireShared.appGroup) ?? .standard
    }

    static func save(_ choice: ConnectOptions) {
        let store = defaults
        store.set(NSNumber(value: choice.hops), forKey: hops)
        store.set(choice.country, forKey: country)
        store.set(choice.maxPricePerGib.map { NSNumber(value: $0) }, forKey: maxPricePerGib)
    }

    /// The saved choice, or the defaults (any exit, 3 hops).
    static func load() -> ConnectOptions {
        let store = defaults
        guard let saved = store.object(forKey: hops) as? NSNumber else { return ConnectOptions() }
        return ConnectOptions(
            country: store.string(forKey: country),
            hops: saved.uint8Value,
            maxPricePerGib: (store.object(forKey: maxPricePerGib) as? NSNumber)?.uint64Value
        )
    }
}

extension ConnectOptions {
    /// The app's start options (see StartOption); nil without hops, i.e.
    /// not a start by the app.
    fileprivate init?(startOptions options: [String: NSObject]) {
        guard let hops = options[StartOption.hops] as? NSNumber else { return nil }
        self.init(
            country: options[StartOption.country] as? String,
            hops: hops.uint8Value,
            maxPricePerGib: (options[StartOption.maxPricePerGib] as? NSNumber)?.uint64Value
        )
    }
}

extension HopwireError {
    /// What went wrong, in words a user can read (the generated
    /// `errorDescription` is the Swift reflection of the case).
    var message: String {
        switch self {
        case let .NoExit(message), let .HopUnreachable(message), let .ExitRefused(message), let .Funds(message),
            let .LedgerUnreachable(message), let .Config(message), let .Platform(message),
            let .NotPermitted(message), let .BadInput(message), let .Version(message), let .Internal(message),
            let .Closed(message):
            return message
        }
    }
}

/// An error whose description is a readable message: what iOS records as
/// the tunnel's last disconnect error, which the app shows.
struct TunnelFailure: LocalizedError {
    let errorDescription: String?

    init(_ message: String) {
        errorDescription = message
    }

    init(_ error: Error) {
        errorDescription = (error as? HopwireError)?.message ?? error.localizedDescription
    }
}

private func providerStatus(_ status: Status) -> ProviderStatus {
    ProviderStatus(
        state: providerState(status.state),
        error: status.error,
        attempt: status.attempt,
        circuit: status.circuit.map { ProviderStatus.Hop(id: $0.id, addr: $0.addr, region: $0.region) },
        innerV4: status.innerV4,
        innerV6: status.innerV6,
        ipv6Blocked: status.ipv6Blocked,
        mtu: status.mtu,
        bytesSent: status.bytesSent,
        bytesReceived: status.bytesReceived,
        txBps: status.txBps,
        rxBps: status.rxBps,
        rttMs: status.rttMs,
        spent: status.spent
    )
}

private func providerState(_ state: State) -> ProviderStatus.State {
    switch state {
    case .disconnected: return .disconnected
    case .connecting: return .connecting
    case .connected: return .connected
    case .reconnecting: return .reconnecting
    case .error: return .error
    }
}
