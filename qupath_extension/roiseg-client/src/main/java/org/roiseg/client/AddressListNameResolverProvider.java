package org.roiseg.client;

import io.grpc.EquivalentAddressGroup;
import io.grpc.NameResolver;
import io.grpc.NameResolverProvider;
import io.grpc.NameResolverRegistry;
import io.grpc.Status;
import io.grpc.StatusOr;
import io.grpc.SynchronizationContext;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.URI;
import java.net.UnknownHostException;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.Executor;

/**
 * gRPC name resolution of a {@link ServerTarget} list ({@code host1:port1,host2:port2}), which
 * gRPC Java has no scheme for: each listed name is looked up (again on every refresh, e.g. after
 * a server failed), each address its own server for round_robin. Registered once, globally, by
 * {@link #register()}.
 */
final class AddressListNameResolverProvider extends NameResolverProvider {

    /** The scheme of {@link ServerTarget#channelTarget()} for a list. */
    static final String SCHEME = "roiseg-list";

    private static boolean registered;

    /** Makes the scheme known to gRPC (once per class loader). */
    static synchronized void register() {
        if (!registered) {
            NameResolverRegistry.getDefaultRegistry().register(new AddressListNameResolverProvider());
            registered = true;
        }
    }

    @Override
    protected boolean isAvailable() {
        return true;
    }

    @Override
    protected int priority() {
        return 5;
    }

    @Override
    public String getDefaultScheme() {
        return SCHEME;
    }

    @Override
    public Collection<Class<? extends SocketAddress>> getProducedSocketAddressTypes() {
        return List.of(InetSocketAddress.class);
    }

    @Override
    public NameResolver newNameResolver(URI targetUri, NameResolver.Args args) {
        if (!SCHEME.equals(targetUri.getScheme())) {
            return null;
        }
        String path = targetUri.getPath() == null ? "" : targetUri.getPath();
        ServerTarget target = ServerTarget.parse(path.startsWith("/") ? path.substring(1) : path);
        Executor executor = args.getOffloadExecutor() != null ? args.getOffloadExecutor() : Runnable::run;
        return new Resolver(target.addresses(), executor, args.getSynchronizationContext());
    }

    /**
     * Looks the listed names up on the offload executor and reports every address found; its
     * state is kept in the channel's synchronization context, where gRPC calls it.
     */
    private static final class Resolver extends NameResolver {

        private final List<ServerTarget.HostPort> servers;
        private final Executor executor;
        private final SynchronizationContext syncContext;
        private Listener2 listener;
        private boolean resolving;

        Resolver(List<ServerTarget.HostPort> servers, Executor executor, SynchronizationContext syncContext) {
            this.servers = servers;
            this.executor = executor;
            this.syncContext = syncContext;
        }

        @Override
        public String getServiceAuthority() {
            return servers.get(0).toString();
        }

        @Override
        public void start(Listener2 listener) {
            this.listener = listener;
            resolve();
        }

        @Override
        public void refresh() {
            resolve();
        }

        private void resolve() {
            if (resolving || listener == null) {
                return;
            }
            resolving = true;
            executor.execute(() -> {
                StatusOr<List<EquivalentAddressGroup>> addresses = lookUp();
                syncContext.execute(() -> {
                    resolving = false;
                    if (listener != null) {
                        listener.onResult2(ResolutionResult.newBuilder().setAddressesOrError(addresses).build());
                    }
                });
            });
        }

        private StatusOr<List<EquivalentAddressGroup>> lookUp() {
            List<EquivalentAddressGroup> groups = new ArrayList<>();
            List<String> failed = new ArrayList<>();
            for (ServerTarget.HostPort server : servers) {
                try {
                    for (InetAddress address : InetAddress.getAllByName(server.host())) {
                        groups.add(new EquivalentAddressGroup(new InetSocketAddress(address, server.port())));
                    }
                } catch (UnknownHostException e) {
                    failed.add(server.host());
                }
            }
            if (groups.isEmpty()) {
                return StatusOr.fromStatus(Status.UNAVAILABLE.withDescription(
                        "none of the roiseg servers' names could be looked up: " + String.join(", ", failed)));
            }
            return StatusOr.fromValue(groups);
        }

        @Override
        public void shutdown() {
            listener = null;
        }
    }
}
