package org.roiseg.client;

import io.grpc.BindableService;
import io.grpc.InsecureServerCredentials;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerCredentials;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.protobuf.services.HealthStatusManager;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import org.roiseg.proto.v1.SegmentationGrpc;

/**
 * A loopback gRPC server hosting a test service, and the health service reporting it SERVING as
 * the real server's does; records the headers of every call to the test service.
 */
final class FakeServer implements AutoCloseable {

    final List<Metadata> headers = new CopyOnWriteArrayList<>();
    private final Server server;

    FakeServer(BindableService service) {
        this(service, InsecureServerCredentials.create());
    }

    FakeServer(BindableService service, ServerCredentials credentials, ServerInterceptor... interceptors) {
        ServerInterceptor recorder = new ServerInterceptor() {
            @Override
            public <Q, R> ServerCall.Listener<Q> interceptCall(ServerCall<Q, R> call, Metadata h,
                                                               ServerCallHandler<Q, R> next) {
                headers.add(h);
                return next.startCall(call, h);
            }
        };
        var definition = ServerInterceptors.intercept(ServerInterceptors.intercept(service, interceptors), recorder);
        HealthStatusManager health = new HealthStatusManager();
        health.setStatus(SegmentationGrpc.SERVICE_NAME, HealthCheckResponse.ServingStatus.SERVING);
        try {
            server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0), credentials)
                    .maxInboundMessageSize(64 << 20)
                    .addService(definition)
                    .addService(health.getHealthService())
                    .build()
                    .start();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    int port() {
        return server.getPort();
    }

    RoisegClient.Builder client() {
        return RoisegClient.builder().host("127.0.0.1").port(port());
    }

    @Override
    public void close() {
        server.shutdownNow();
        try {
            server.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
