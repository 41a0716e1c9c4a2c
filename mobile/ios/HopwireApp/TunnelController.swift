// The app's side of the tunnel: Hopwire's VPN configuration
// (NETunnelProviderManager), starting and stopping the packet tunnel
// extension, always-on and lockdown, the tunnel's status, and what the
// running extension reports. The app does not link the Hopwire library:
// the session runs in the extension.

import Combine
import Foundation
import NetworkExtension

/// The packet tunnel extension's bundle identifier: your value (the app's
/// bundle identifier plus ".tunnel" is usual).
let tunnelBundleIdentifier = "net.hopwire.app.tunnel"

/// One per app, living as long as the app.
@MainActor
final class TunnelController: ObservableObject {
    @Published private(set) var status: NEVPNStatus = .invalid
    /// What the running extension reports; nil while none runs.
    @Published private(set) var details: ProviderStatus?
    /// Why the tunnel last stopped or failed to start, as iOS recorded it
    /// (iOS 16+).
    @Published private(set) var lastError: String?

    private var manager: NETunnelProviderManager?
    private var statusObserver: NSObjectProtocol?

    /// Always-on: iOS starts the tunnel whenever the device has a network
    /// and starts it again after it stops (on-demand rules). Disconnect
    /// pauses it until the next connect.
    var alwaysOn: Bool {
        !(manager?.onDemandRules ?? []).isEmpty
    }

    /// Lockdown: iOS sends all traffic but a few system services through
    /// the tunnel, and none while it is down (includeAllNetworks).
    var lockdown: Bool {
        manager?.protocolConfiguration?.includeAllNetworks ?? false
    }

    /// Finds Hopwire's VPN configuration, or prepares one; it is saved, and
    /// iOS asks the user to allow it, at the first connect.
    @discardableResult
    func load() async throws -> NETunnelProviderManager {
        let managers = try await NETunnelProviderManager.loadAllFromPreferences()
        let found = managers.first {
            ($0.protocolConfiguration as? NETunnelProviderProtocol)?.providerBundleIdentifier == tunnelBundleIdentifier
        }
        let manager = found ?? Self.newManager()
        use(manager)
        return manager
    }

    /// Starts the tunnel with this choice; the extension remembers it for
    /// starts by iOS (always-on, Settings), which carry none. iOS ignores a
    /// start while the tunnel runs: disconnect first to change the choice.
    func connect(country: String? = nil, hops: UInt8 = 3, maxPricePerGib: UInt64? = nil) async throws {
        let manager = try await loaded()
        // A configuration never saved, or turned off in Settings.
        if manager.connection.status == .invalid || !manager.isEnabled {
            manager.isEnabled = true
            try await save(manager)
        }
        var options: [String: NSObject] = [StartOption.hops: NSNumber(value: hops)]
        if let country {
            options[StartOption.country] = country as NSString
        }
        if let maxPricePerGib {
            options[StartOption.maxPricePerGib] = NSNumber(value: maxPricePerGib)
        }
        try manager.connection.startVPNTunnel(options: options)
        // Always-on resumes after this start, not before: iOS's own start,
        // with the last choice, would otherwise overtake it.
        if alwaysOn && !manager.isOnDemandEnabled {
            manager.isOnDemandEnabled = true
            try await save(manager)
        }
    }

    func disconnect() async throws {
        guard let manager else { return }
        // With on-demand on, iOS would start the tunnel again at once: off
        // until the next connect. The rules, which say always-on is wanted,
        // stay.
        if manager.isOnDemandEnabled {
            manager.isOnDemandEnabled = false
            try await save(manager)
        }
        manager.connection.stopVPNTunnel()
    }

    /// Turning it on also starts the tunnel: the rule matches any network.
    func setAlwaysOn(_ on: Bool) async throws {
        let manager = try await loaded()
        let anyNetwork = NEOnDemandRuleConnect()
        anyNetwork.interfaceTypeMatch = .any
        manager.onDemandRules = on ? [anyNetwork] : []
        manager.isOnDemandEnabled = on
        if on {
            manager.isEnabled = true
        }
        objectWillChange.send()
        try await save(manager)
    }

    /// Applies from the tunnel's next start. The session's own `lockdown`
    /// setting has no effect on iOS: iOS holds the traffic, not the session.
    func setLockdown(_ on: Bool) async throws {
        let manager = try await loaded()
        manager.protocolConfiguration?.includeAllNetworks = on
        objectWillChange.send()
        try await save(manager)
    }

    /// Asks the running extension for its status; call it as often as the
    /// screen needs (every second while it shows traffic, say).
    func refreshDetails() async {
        guard let session = manager?.connection as? NETunnelProviderSession,
            [.connecting, .connected, .reasserting].contains(session.status)
        else {
            details = nil
            return
        }
        details = await Self.ask(session, ProviderRequest(command: .status))
    }

    private func loaded() async throws -> NETunnelProviderManager {
        if let manager {
            return manager
        }
        return try await load()
    }

    private func use(_ manager: NETunnelProviderManager) {
        self.manager = manager
        if let statusObserver {
            NotificationCenter.default.removeObserver(statusObserver)
        }
        statusObserver = NotificationCenter.default.addObserver(
            forName: .NEVPNStatusDidChange, object: manager.connection, queue: .main
        ) { [weak self] _ in
            Task { @MainActor in self?.statusChanged() }
        }
        statusChanged()
    }

    private func statusChanged() {
        guard let connection = manager?.connection else { return }
        status = connection.status
        switch connection.status {
        case .connected, .reasserting:
            Task { await refreshDetails() }
        case .disconnected:
            details = nil
            if #available(iOS 16.0, *) {
                connection.fetchLastDisconnectError { [weak self] error in
                    Task { @MainActor in self?.lastError = error?.localizedDescription }
                }
            }
        case .invalid, .connecting, .disconnecting:
            break
        @unknown default:
            break
        }
    }

    private func save(_ manager: NETunnelProviderManager) async throws {
        try await manager.saveToPreferences()
        // A configuration must be loaded again after saving: starting it
        // otherwise fails the first time (a known NetworkExtension quirk).
        try await manager.loadFromPreferences()
    }

    private static func newManager() -> NETunnelProviderManager {
        let tunnel = NETunnelProviderProtocol()
        tunnel.providerBundleIdentifier = tunnelBundleIdentifier
        // Shown in Settings → VPN as the server: there is no single one.
        tunnel.serverAddress = "Hopwire network"
        let manager = NETunnelProviderManager()
        manager.protocolConfiguration = tunnel
        manager.localizedDescription = "Hopwire"
        manager.isEnabled = true
        return manager
    }

    /// One request to the extension; nil when it cannot answer (not
    /// running, no session, or a reply that does not decode).
    private static func ask(_ session: NETunnelProviderSession, _ request: ProviderRequest) async -> ProviderStatus? {
        guard let message = try? JSONEncoder().encode(request) else { return nil }
        return await withCheckedContinuation { continuation in
            do {
                try session.sendProviderMessage(message) { reply in
                    continuation.resume(returning: reply.flatMap { try? JSONDecoder().decode(ProviderStatus.self, from: $0) })
                }
            } catch {
                continuation.resume(returning: nil)
            }
        }
    }
}
