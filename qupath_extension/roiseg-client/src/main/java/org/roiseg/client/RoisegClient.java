package org.roiseg.client;

import com.google.protobuf.UnsafeByteOperations;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.shaded.io.grpc.netty.NegotiationType;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.netty.shaded.io.netty.handler.ssl.SslContextBuilder;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Function;
import javax.net.ssl.SSLException;
import org.locationtech.jts.geom.Geometry;
import org.roiseg.proto.v1.FineTuneEvent;
import org.roiseg.proto.v1.GeoJsonChunk;
import org.roiseg.proto.v1.GetServerInfoRequest;
import org.roiseg.proto.v1.ImageSource;
import org.roiseg.proto.v1.ListExamplesRequest;
import org.roiseg.proto.v1.ListExamplesResponse;
import org.roiseg.proto.v1.ListModelsRequest;
import org.roiseg.proto.v1.ListModelsResponse;
import org.roiseg.proto.v1.ModelInfo;
import org.roiseg.proto.v1.ModelResult;
import org.roiseg.proto.v1.Progress;
import org.roiseg.proto.v1.RegionPixels;
import org.roiseg.proto.v1.RemoveExampleRequest;
import org.roiseg.proto.v1.RemoveExampleResponse;
import org.roiseg.proto.v1.RetireVersionRequest;
import org.roiseg.proto.v1.Roi;
import org.roiseg.proto.v1.SegmentEvent;
import org.roiseg.proto.v1.SegmentRequest;
import org.roiseg.proto.v1.SegmentationGrpc;
import org.roiseg.proto.v1.SetDefaultVersionRequest;
import org.roiseg.proto.v1.SlideFile;
import org.roiseg.proto.v1.SubmitCorrectionsRequest;
import org.roiseg.proto.v1.SubmitCorrectionsResponse;
import org.roiseg.proto.v1.UploadHeader;
import org.roiseg.proto.v1.UploadImageRequest;
import org.roiseg.proto.v1.UploadImageResponse;

/**
 * A connection to one roiseg server or several ({@link ServerTarget}: {@code host1:port1,host2:port2}
 * or {@code dns:///name:port}). Thread-safe: one client can serve several calls at once. Close it
 * when done.
 *
 * <p>Calls to several servers are spread by gRPC's round_robin policy over the servers whose
 * health check reports SERVING (a draining server gets no new calls); calls that are safe to send
 * again are retried on another server when one is unavailable. An upload and the segmentation or
 * submission that uses it go over a second channel that keeps to one server (uploads live on the
 * server that received them); if that server is gone before they are used, the image is uploaded
 * again to another.
 *
 * <pre>{@code
 * try (RoisegClient client = RoisegClient.builder().host("127.0.0.1").port(50051).build()) {
 *     SegmentResult result = client.segmentRegion(region, roiGeometry, SegmentOptions.defaults(),
 *             ProgressListener.NONE, new CancellationHandle());
 * }
 * }</pre>
 *
 * <p>Every method throws {@link RoisegException} when the server cannot be reached, refuses the
 * request or fails, and {@link RoisegCancelledException} when the call is cancelled.
 */
public final class RoisegClient implements AutoCloseable {

    /** Port the roiseg server listens on by default. */
    public static final int DEFAULT_PORT = 50051;
    /** Default time limit of a segmentation (upload included). */
    public static final Duration DEFAULT_DEADLINE = Duration.ofMinutes(10);
    /** Default largest message sent or received, as the Python client. */
    public static final int DEFAULT_MAX_MESSAGE_BYTES = 64 << 20;
    /** Size of the chunks an image is uploaded in. */
    public static final int UPLOAD_CHUNK_BYTES = 1 << 20;
    /** Longest wait for the small calls (server info, model list), whatever the deadline. */
    static final Duration INFO_DEADLINE = Duration.ofSeconds(30);

    /** Calls sent again to another server after UNAVAILABLE (Segment only before its first event). */
    static final List<String> RETRIED_METHODS = List.of("GetServerInfo", "ListModels", "UploadImage", "Segment",
            "ListExamples");

    private final String target;
    private final boolean several;
    private final ManagedChannel channel;
    private final ManagedChannel pinnedChannel;
    private final Duration deadline;
    private final int maxMessageBytes;
    private final SegmentationGrpc.SegmentationBlockingStub blocking;
    private final SegmentationGrpc.SegmentationBlockingStub pinnedBlocking;
    private final SegmentationGrpc.SegmentationStub pinnedAsync;
    private volatile ServerInfo compatibleServer;

    private RoisegClient(Builder b, ManagedChannel channel, ManagedChannel pinnedChannel) {
        this.target = b.target.toString();
        this.several = b.target.several();
        this.channel = channel;
        this.pinnedChannel = pinnedChannel;
        this.deadline = b.deadline;
        this.maxMessageBytes = b.maxMessageBytes;
        this.blocking = SegmentationGrpc.newBlockingStub(channel);
        this.pinnedBlocking = SegmentationGrpc.newBlockingStub(pinnedChannel);
        this.pinnedAsync = SegmentationGrpc.newStub(pinnedChannel);
    }

    /** A builder for a plaintext connection to 127.0.0.1:{@value #DEFAULT_PORT}. */
    public static Builder builder() {
        return new Builder();
    }

    /** The server's address as host:port, or the servers' target as given. */
    public String target() {
        return target;
    }

    /**
     * The server's versions, limits and device.
     *
     * @throws RoisegException also when the server speaks another major contract version; the
     *                         message says whether the server or the extension must be updated
     */
    public ServerInfo serverInfo() {
        ServerInfo info = ServerInfo.fromProto(unary(s -> s.getServerInfo(GetServerInfoRequest.getDefaultInstance())));
        checkContract(info);
        compatibleServer = info;
        return info;
    }

    /** Every model the server can run, the default one marked, after the contract-version check. */
    public List<ModelDescription> listModels() {
        compatibleServer();
        ListModelsResponse response = unary(s -> s.listModels(ListModelsRequest.getDefaultInstance()));
        List<ModelDescription> models = new ArrayList<>();
        for (var model : response.getModelsList()) {
            models.add(ModelDescription.fromProto(model, response.getDefaultModelId()));
        }
        return models;
    }

    /**
     * Segments a ROI in pixels the client read. The image is sent as PNG, in the request when it
     * fits in half a message, else uploaded first in chunks of {@value #UPLOAD_CHUNK_BYTES} bytes.
     *
     * @param image    the pixels covering the ROI (or part of it: the ROI is clipped to them)
     * @param roi      the region, a Polygon or MultiPolygon in full-resolution slide pixels
     * @param options  models and options; null for {@link SegmentOptions#defaults()}
     * @param listener progress events; null for none
     * @param cancel   lets another thread cancel the call; null if not needed
     * @throws IllegalArgumentException if the ROI is not a polygonal area
     */
    public SegmentResult segmentRegion(RegionImage image, Geometry roi, SegmentOptions options,
                                       ProgressListener listener, CancellationHandle cancel) {
        Objects.requireNonNull(image, "image");
        Roi roiMessage = Rois.toProto(roi);
        ProgressListener progress = listener == null ? ProgressListener.NONE : listener;
        return cancellable(cancel, () -> {
            Deadline end = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
            return withPixels(image, end, progress,
                    (stub, source) -> segment(stub, request(source, roiMessage, options), end, progress));
        });
    }

    /** {@link #segmentRegion(RegionImage, Geometry, SegmentOptions, ProgressListener, CancellationHandle)}
     * without progress events or cancellation. */
    public SegmentResult segmentRegion(RegionImage image, Geometry roi, SegmentOptions options) {
        return segmentRegion(image, roi, options, null, null);
    }

    /**
     * Segments a ROI of a slide file the server reads itself (it must have been started with a
     * {@code --slide-root} that holds the file).
     *
     * @param serverPath             absolute path of the slide on the server
     * @param pixelSizeMicronsOrZero full-resolution µm/px overriding the file's; 0 (or NaN): the file's
     * @param roi                    the region, a Polygon or MultiPolygon in full-resolution pixels
     * @param options                models and options; null for {@link SegmentOptions#defaults()}
     * @param listener               progress events; null for none
     * @param cancel                 lets another thread cancel the call; null if not needed
     * @throws IllegalArgumentException if the path is empty or the ROI is not a polygonal area
     */
    public SegmentResult segmentSlide(String serverPath, double pixelSizeMicronsOrZero, Geometry roi,
                                      SegmentOptions options, ProgressListener listener, CancellationHandle cancel) {
        checkSlidePath(serverPath);
        Roi roiMessage = Rois.toProto(roi);
        ProgressListener progress = listener == null ? ProgressListener.NONE : listener;
        return cancellable(cancel, () -> {
            Deadline end = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
            compatibleServer();
            return segment(blocking, request(slideSource(serverPath, pixelSizeMicronsOrZero), roiMessage, options), end,
                    progress);
        });
    }

    // ------------------------------------------------------------------ fast track (contract 1.1)

    /**
     * Stores corrected annotations of a ROI, with the pixels the client read, as a training example
     * of a model (SubmitCorrections; the server needs {@code --dataset-dir}). The pixels travel as
     * for {@link #segmentRegion}. Submitting the same image id and ROI key again replaces the example.
     *
     * @param image       the pixels covering the ROI, read as for segmentation
     * @param roi         the region the pathologist reviewed, a Polygon or MultiPolygon in full-resolution pixels
     * @param corrections the corrected annotations and the example's identity ({@link Corrections#imageId()}
     *                    is required here)
     * @param listener    upload progress; null for none
     * @param cancel      lets another thread cancel the call; null if not needed
     * @throws IllegalArgumentException if the ROI is not a polygonal area or no image id is given
     */
    public SubmittedCorrections submitCorrectionsRegion(RegionImage image, Geometry roi, Corrections corrections,
                                                        ProgressListener listener, CancellationHandle cancel) {
        Objects.requireNonNull(image, "image");
        Objects.requireNonNull(corrections, "corrections");
        if (corrections.imageId().isBlank()) {
            throw new IllegalArgumentException("an image id is needed with pixels the client read");
        }
        Roi roiMessage = Rois.toProto(roi);
        ProgressListener progress = listener == null ? ProgressListener.NONE : listener;
        return cancellable(cancel, true, () -> {
            Deadline end = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
            return withPixels(image, end, progress,
                    (stub, source) -> submit(stub, source, roiMessage, corrections, end));
        });
    }

    /**
     * Stores corrected annotations of a ROI of a slide file the server reads itself (it needs
     * {@code --slide-root} and {@code --dataset-dir}) as a training example of a model.
     *
     * @param serverPath             absolute path of the slide on the server
     * @param pixelSizeMicronsOrZero full-resolution µm/px overriding the file's; 0 (or NaN): the file's
     * @param roi                    the region, a Polygon or MultiPolygon in full-resolution pixels
     * @param corrections            the corrected annotations and the example's identity
     * @param cancel                 lets another thread cancel the call; null if not needed
     */
    public SubmittedCorrections submitCorrectionsSlide(String serverPath, double pixelSizeMicronsOrZero, Geometry roi,
                                                       Corrections corrections, CancellationHandle cancel) {
        checkSlidePath(serverPath);
        Objects.requireNonNull(corrections, "corrections");
        Roi roiMessage = Rois.toProto(roi);
        return cancellable(cancel, true, () -> {
            Deadline end = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
            compatibleServer();
            return submit(blocking, slideSource(serverPath, pixelSizeMicronsOrZero), roiMessage, corrections, end);
        });
    }

    /** The stored training examples of a model, oldest first; empty id: the server's default model. */
    public List<TrainingExample> listExamples(String modelId) {
        compatibleServer();
        ListExamplesResponse response = fastTrackUnary(s -> s.listExamples(
                ListExamplesRequest.newBuilder().setModelId(modelId == null ? "" : modelId).build()));
        return response.getExamplesList().stream().map(TrainingExample::fromProto).toList();
    }

    /** Removes one stored example of a model (empty id: the server's default); returns it. */
    public TrainingExample removeExample(String modelId, String exampleId) {
        if (exampleId == null || exampleId.isBlank()) {
            throw new IllegalArgumentException("no example id given");
        }
        compatibleServer();
        RemoveExampleResponse response = fastTrackUnary(s -> s.removeExample(RemoveExampleRequest.newBuilder()
                .setModelId(modelId == null ? "" : modelId).setExampleId(exampleId).build()));
        return TrainingExample.fromProto(response.getRemoved());
    }

    /** Makes {@code id@version} the version the model's plain id selects; returns the model. */
    public ModelDescription setDefaultVersion(String versionedModelId) {
        compatibleServer();
        ModelInfo info = fastTrackUnary(s -> s.setDefaultVersion(
                SetDefaultVersionRequest.newBuilder().setModelId(nonNull(versionedModelId)).build()));
        return ModelDescription.fromProto(info, "");
    }

    /** Stops serving {@code id@version} (not the default version); returns the model. */
    public ModelDescription retireVersion(String versionedModelId) {
        compatibleServer();
        ModelInfo info = fastTrackUnary(s -> s.retireVersion(
                RetireVersionRequest.newBuilder().setModelId(nonNull(versionedModelId)).build()));
        return ModelDescription.fromProto(info, "");
    }

    /**
     * Fine-tunes a model on its stored examples (FineTune; the server needs {@code --dataset-dir}):
     * progress events while it trains, then the new version, registered and served at once.
     * Cancelling stops the training and registers nothing. The client's time limit applies.
     *
     * @param options  the start model and the training settings
     * @param listener progress events; null for none
     * @param cancel   lets another thread cancel the call; null if not needed
     */
    public FineTuneResult fineTune(FineTuneOptions options, FineTuneListener listener, CancellationHandle cancel) {
        Objects.requireNonNull(options, "options");
        FineTuneListener progress = listener == null ? FineTuneListener.NONE : listener;
        return cancellable(cancel, true, () -> {
            Deadline end = Deadline.after(deadline.toNanos(), TimeUnit.NANOSECONDS);
            compatibleServer();
            Iterator<FineTuneEvent> events = blocking.withDeadline(end).fineTune(options.toProto());
            org.roiseg.proto.v1.FineTuneResult result = null;
            while (events.hasNext()) {
                FineTuneEvent event = events.next();
                if (event.hasProgress()) {
                    progress.onProgress(FineTuneProgress.fromProto(event.getProgress()));
                } else if (event.hasResult()) {
                    result = event.getResult();
                }
            }
            if (result == null) {
                throw new RoisegException(Status.Code.DATA_LOSS, "The roiseg server at " + target
                        + " ended the fine-tuning without a result. Check the server's log.");
            }
            return new FineTuneResult(ModelDescription.fromProto(result.getModel(), ""), result.getExampleIdsList(),
                    result.getEpochs(), result.getSteps(), result.getSeconds(), result.getStopReason());
        });
    }

    /** Closes the connection; calls still running are cancelled. */
    @Override
    public void close() {
        channel.shutdown();
        pinnedChannel.shutdown();
        try {
            for (ManagedChannel c : List.of(channel, pinnedChannel)) {
                if (!c.awaitTermination(2, TimeUnit.SECONDS)) {
                    c.shutdownNow();
                    c.awaitTermination(2, TimeUnit.SECONDS);
                }
            }
        } catch (InterruptedException e) {
            channel.shutdownNow();
            pinnedChannel.shutdownNow();
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public String toString() {
        return "RoisegClient[" + target + "]";
    }

    // ------------------------------------------------------------------ internals

    private static void checkSlidePath(String serverPath) {
        if (serverPath == null || serverPath.isBlank()) {
            throw new IllegalArgumentException("no slide path given");
        }
    }

    private static String nonNull(String text) {
        if (text == null || text.isBlank()) {
            throw new IllegalArgumentException("no model id given");
        }
        return text.strip();
    }

    /** A slide file the server reads, with the pixel size to use (0 or NaN: the file's). */
    private static ImageSource slideSource(String serverPath, double pixelSizeMicronsOrZero) {
        double pixelSize = pixelSizeMicronsOrZero > 0 && Double.isFinite(pixelSizeMicronsOrZero)
                ? pixelSizeMicronsOrZero : 0;
        return ImageSource.newBuilder()
                .setSlide(SlideFile.newBuilder().setPath(serverPath).setPixelSizeUm(pixelSize)).build();
    }

    /** A call given the stub to use and the image source. */
    @FunctionalInterface
    private interface PixelsCall<T> {
        T run(SegmentationGrpc.SegmentationBlockingStub stub, ImageSource source);
    }

    /**
     * {@code call} with the pixels the client read, as PNG: in the request when it fits in half a
     * message, else uploaded first in chunks, and then called on the server that holds the upload.
     * With several servers, if that server is gone (the upload is NOT_FOUND), the image is uploaded
     * again, to the next server, and the call repeated once.
     */
    private <T> T withPixels(RegionImage image, Deadline end, ProgressListener progress, PixelsCall<T> call)
            throws InterruptedException {
        ServerInfo info = compatibleServer();
        byte[] png = Png.encode(image.image());
        double pixelSize = image.pixelSizeMicrons();
        RegionPixels.Builder pixels = RegionPixels.newBuilder()
                .setDownsample(image.downsample())
                .setOriginX(image.originX())
                .setOriginY(image.originY())
                .setPixelSizeUm(pixelSize > 0 && Double.isFinite(pixelSize) ? pixelSize : 0)
                .setImageWidth(image.fullImageWidth())
                .setImageHeight(image.fullImageHeight());
        if (png.length <= inlineLimit(info)) {
            pixels.setEncoded(UnsafeByteOperations.unsafeWrap(png));
            return call.run(blocking, ImageSource.newBuilder().setPixels(pixels).build());
        }
        pixels.setUploadId(upload(png, end, progress));
        try {
            return call.run(pinnedBlocking, ImageSource.newBuilder().setPixels(pixels).build());
        } catch (StatusRuntimeException e) {
            if (!several || e.getStatus().getCode() != Status.Code.NOT_FOUND
                    || !Objects.toString(e.getStatus().getDescription(), "").contains(pixels.getUploadId())) {
                throw e;
            }
        }
        pixels.setUploadId(upload(png, end, progress));
        return call.run(pinnedBlocking, ImageSource.newBuilder().setPixels(pixels).build());
    }

    private SubmittedCorrections submit(SegmentationGrpc.SegmentationBlockingStub stub, ImageSource source, Roi roi,
                                        Corrections corrections, Deadline end) {
        SubmitCorrectionsResponse response = stub.withDeadline(end).submitCorrections(
                SubmitCorrectionsRequest.newBuilder()
                        .setModelId(corrections.modelId())
                        .setImage(source)
                        .setRoi(roi)
                        .setGeojson(corrections.geojson())
                        .setImageId(corrections.imageId())
                        .setRoiKey(corrections.roiKey())
                        .setPredictedBy(corrections.predictedBy())
                        .setAllowUpsample(corrections.allowUpsample())
                        .setClientContractMajor(Conventions.CONTRACT_MAJOR)
                        .setClientContractMinor(Conventions.CONTRACT_MINOR)
                        .build());
        return new SubmittedCorrections(TrainingExample.fromProto(response.getExample()), response.getReplaced());
    }

    private ServerInfo compatibleServer() {
        ServerInfo info = compatibleServer;
        return info != null ? info : serverInfo();
    }

    private void checkContract(ServerInfo info) {
        if (info.contractMajor() == Conventions.CONTRACT_MAJOR) {
            return;
        }
        boolean serverNewer = info.contractMajor() > Conventions.CONTRACT_MAJOR;
        throw new RoisegException(Status.Code.FAILED_PRECONDITION,
                "The roiseg server at " + target + " (roiseg " + info.serverVersion() + ") speaks contract version "
                        + info.contractVersion() + ", this QuPath extension speaks " + Conventions.CONTRACT_MAJOR + "."
                        + Conventions.CONTRACT_MINOR + ": update the "
                        + (serverNewer ? "roiseg QuPath extension." : "roiseg server."));
    }

    private long inlineLimit(ServerInfo info) {
        long limit = maxMessageBytes;
        if (info.maxMessageBytes() > 0) {
            limit = Math.min(limit, info.maxMessageBytes());
        }
        return limit / 2;
    }

    private static SegmentRequest request(ImageSource source, Roi roi, SegmentOptions options) {
        SegmentOptions o = options == null ? SegmentOptions.defaults() : options;
        return SegmentRequest.newBuilder()
                .addAllModelIds(o.modelIds())
                .setImage(source)
                .setRoi(roi)
                .setOptions(o.toProto())
                .setClientContractMajor(Conventions.CONTRACT_MAJOR)
                .setClientContractMinor(Conventions.CONTRACT_MINOR)
                .build();
    }

    private <T> T unary(Function<SegmentationGrpc.SegmentationBlockingStub, T> call) {
        return unary(call, false);
    }

    private <T> T fastTrackUnary(Function<SegmentationGrpc.SegmentationBlockingStub, T> call) {
        return unary(call, true);
    }

    private <T> T unary(Function<SegmentationGrpc.SegmentationBlockingStub, T> call, boolean fastTrack) {
        Duration limit = deadline.compareTo(INFO_DEADLINE) < 0 ? deadline : INFO_DEADLINE;
        try {
            return call.apply(blocking.withDeadlineAfter(limit.toNanos(), TimeUnit.NANOSECONDS));
        } catch (StatusRuntimeException e) {
            throw fastTrack ? Errors.fromFastTrackStatus(e, target, limit) : Errors.fromStatus(e, target, limit);
        }
    }

    @FunctionalInterface
    private interface Work<T> {
        T run() throws InterruptedException;
    }

    /** Runs {@code work} in a context that {@code handle} cancels, mapping failures to RoisegExceptions. */
    private <T> T cancellable(CancellationHandle handle, Work<T> work) {
        return cancellable(handle, false, work);
    }

    /** As above; {@code fastTrack}: map failures as the fast-track calls' (docs/fast-track.md). */
    private <T> T cancellable(CancellationHandle handle, boolean fastTrack, Work<T> work) {
        if (handle != null && handle.isCancelled()) {
            throw new RoisegCancelledException();
        }
        Context.CancellableContext context = Context.current().withCancellation();
        if (handle != null) {
            handle.attach(context);
        }
        Context previous = context.attach();
        try {
            return work.run();
        } catch (StatusRuntimeException e) {
            if ((handle != null && handle.isCancelled()) || e.getStatus().getCode() == Status.Code.CANCELLED) {
                throw new RoisegCancelledException(e);
            }
            throw fastTrack ? Errors.fromFastTrackStatus(e, target, deadline)
                    : Errors.fromStatus(e, target, deadline);
        } catch (RoisegException e) {
            if (handle != null && handle.isCancelled() && !(e instanceof RoisegCancelledException)) {
                throw new RoisegCancelledException(e);
            }
            throw e;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new RoisegCancelledException(e);
        } finally {
            context.detach(previous);
            context.cancel(null);
            if (handle != null) {
                handle.detach(context);
            }
        }
    }

    /** Uploads encoded image bytes in chunks, with flow control; returns the upload id. */
    private String upload(byte[] data, Deadline end, ProgressListener progress) throws InterruptedException {
        int chunks = (data.length + UPLOAD_CHUNK_BYTES - 1) / UPLOAD_CHUNK_BYTES;
        AtomicInteger sent = new AtomicInteger();
        CompletableFuture<UploadImageResponse> done = new CompletableFuture<>();
        pinnedAsync.withDeadline(end).uploadImage(new ClientResponseObserver<UploadImageRequest, UploadImageResponse>() {
            private ClientCallStreamObserver<UploadImageRequest> requests;
            private int next = -1;
            private boolean finished;

            @Override
            public void beforeStart(ClientCallStreamObserver<UploadImageRequest> stream) {
                requests = stream;
                stream.setOnReadyHandler(this::sendWhileReady);
            }

            private void sendWhileReady() {
                while (!finished && requests.isReady()) {
                    if (next < 0) {
                        requests.onNext(UploadImageRequest.newBuilder()
                                .setHeader(UploadHeader.newBuilder().setTotalBytes(data.length)).build());
                    } else if (next < chunks) {
                        int offset = next * UPLOAD_CHUNK_BYTES;
                        int length = Math.min(UPLOAD_CHUNK_BYTES, data.length - offset);
                        requests.onNext(UploadImageRequest.newBuilder()
                                .setChunk(UnsafeByteOperations.unsafeWrap(data, offset, length)).build());
                        sent.set(next + 1);
                    } else {
                        requests.onCompleted();
                        finished = true;
                    }
                    next++;
                }
            }

            @Override
            public void onNext(UploadImageResponse response) {
                done.complete(response);
            }

            @Override
            public void onError(Throwable error) {
                finished = true;
                done.completeExceptionally(error);
            }

            @Override
            public void onCompleted() {
                done.completeExceptionally(Status.INTERNAL
                        .withDescription("the server ended the upload without an upload id").asRuntimeException());
            }
        });
        int reported = -1;
        while (true) {
            int count = sent.get();
            if (count != reported) {
                progress.onProgress(Stage.UPLOADING, "", count, chunks, "uploading the image ("
                        + (data.length >> 20) + " MiB)");
                reported = count;
            }
            try {
                UploadImageResponse response = done.get(100, TimeUnit.MILLISECONDS);
                if (response.getReceivedBytes() != data.length) {
                    throw new RoisegException(Status.Code.DATA_LOSS, "The server received " + response.getReceivedBytes()
                            + " of the image's " + data.length + " bytes. Try again.");
                }
                if (reported != chunks) {
                    progress.onProgress(Stage.UPLOADING, "", chunks, chunks, "image uploaded");
                }
                return response.getUploadId();
            } catch (TimeoutException e) {
                // report progress and wait on
            } catch (ExecutionException e) {
                Throwable cause = e.getCause();
                if (cause instanceof StatusRuntimeException) {
                    throw (StatusRuntimeException) cause;
                }
                throw Status.fromThrowable(cause).asRuntimeException();
            }
        }
    }

    /** Runs a Segment call and assembles its events into per-model results. */
    private SegmentResult segment(SegmentationGrpc.SegmentationBlockingStub stub, SegmentRequest request, Deadline end,
                                  ProgressListener progress) {
        Iterator<SegmentEvent> events = stub.withDeadline(end).segment(request);
        Map<String, ByteArrayOutputStream> chunks = new HashMap<>();
        Map<String, ModelSegmentation> models = new LinkedHashMap<>();
        while (events.hasNext()) {
            SegmentEvent event = events.next();
            switch (event.getEventCase()) {
                case PROGRESS: {
                    Progress p = event.getProgress();
                    progress.onProgress(Stage.of(p), p.getModelId(), p.getTilesDone(), p.getTilesTotal(),
                            p.getMessage());
                    break;
                }
                case GEOJSON_CHUNK: {
                    GeoJsonChunk chunk = event.getGeojsonChunk();
                    chunks.computeIfAbsent(chunk.getModelId(), id -> new ByteArrayOutputStream())
                            .writeBytes(chunk.getData().toByteArray());
                    break;
                }
                case MODEL_RESULT: {
                    ModelResult result = event.getModelResult();
                    ByteArrayOutputStream text = chunks.remove(result.getModelId());
                    models.put(result.getModelId(), modelSegmentation(result,
                            text == null ? "" : text.toString(StandardCharsets.UTF_8)));
                    break;
                }
                default:
                    break; // an event of a newer contract minor version
            }
        }
        if (!chunks.isEmpty() || models.isEmpty()) {
            throw new RoisegException(Status.Code.DATA_LOSS, "The roiseg server at " + target
                    + " ended its answer before the results were complete. Try again; if it happens again, "
                    + "check the server's log.");
        }
        return new SegmentResult(models);
    }

    private ModelSegmentation modelSegmentation(ModelResult result, String geojson) {
        List<SegmentedFeature> features;
        try {
            features = geojson.isEmpty() ? List.of() : GeoJsonFeatures.read(geojson);
        } catch (RuntimeException e) {
            throw new RoisegException(Status.Code.DATA_LOSS, "The polygons the server returned for model "
                    + result.getModelId() + " could not be read (" + e.getMessage() + ").", e);
        }
        if (features.size() != result.getFeatureCount()) {
            throw new RoisegException(Status.Code.DATA_LOSS, "The server announced " + result.getFeatureCount()
                    + " polygons for model " + result.getModelId() + " but sent " + features.size() + ". Try again.");
        }
        List<ClassArea> areas = new ArrayList<>();
        for (var area : result.getClassAreasList()) {
            areas.add(new ClassArea(area.getName(), area.getAreaUm2(), area.getFeatures()));
        }
        return new ModelSegmentation(result.getModelId(), result.getModelVersion(), result.getCheckpointSha256(),
                features, areas, ExecutionSummary.fromProto(result.getExecution()),
                result.hasConfidence() ? ConfidenceMap.fromProto(result.getConfidence()) : null,
                result.getNoticesList());
    }

    /** Settings of a {@link RoisegClient}; every setter returns the builder. */
    public static final class Builder {

        private ServerTarget target = ServerTarget.of("127.0.0.1", DEFAULT_PORT);
        private boolean tls;
        private File trustCertificate;
        private String bearerToken;
        private Duration deadline = DEFAULT_DEADLINE;
        private int maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;

        private Builder() {
        }

        /** Server host name or IP address (default 127.0.0.1). */
        public Builder host(String host) {
            if (host == null || host.isBlank()) {
                throw new IllegalArgumentException("the server host cannot be empty");
            }
            this.target = ServerTarget.of(host.strip(), target.addresses().get(0).port());
            return this;
        }

        /** Server port, 1..65535 (default {@value RoisegClient#DEFAULT_PORT}). */
        public Builder port(int port) {
            if (port < 1 || port > 65535) {
                throw new IllegalArgumentException("the server port must be between 1 and 65535, got " + port);
            }
            this.target = ServerTarget.of(target.addresses().get(0).host(), port);
            return this;
        }

        /**
         * One server or several: {@code host:port}, {@code host1:port1,host2:port2} or
         * {@code dns:///name:port} (see {@link ServerTarget}); replaces {@link #host} and {@link #port}.
         *
         * @throws IllegalArgumentException with a message for the user when the target is malformed
         */
        public Builder target(String target) {
            this.target = ServerTarget.parse(target);
            return this;
        }

        /** Whether to connect with TLS (default: plaintext). */
        public Builder tls(boolean tls) {
            this.tls = tls;
            return this;
        }

        /**
         * A PEM certificate (or CA) to trust for TLS, e.g. a self-signed server certificate; null
         * trusts the Java runtime's default authorities. Needs {@link #tls(boolean) tls(true)}.
         */
        public Builder trustCertificate(File pemFile) {
            this.trustCertificate = pemFile;
            return this;
        }

        /**
         * A token sent as {@code authorization: Bearer <token>} with every call; null or blank for
         * none. Without TLS the token travels in clear text.
         */
        public Builder bearerToken(String token) {
            if (token != null && !token.isBlank()) {
                String t = token.strip();
                if (!t.chars().allMatch(c -> c > 0x20 && c < 0x7F)) {
                    throw new IllegalArgumentException("the access token may only hold printable ASCII "
                            + "characters without spaces");
                }
                this.bearerToken = t;
            } else {
                this.bearerToken = null;
            }
            return this;
        }

        /** Time limit of each call, a segmentation with its upload included (default 10 minutes). */
        public Builder deadline(Duration deadline) {
            if (deadline == null || deadline.isNegative() || deadline.isZero()) {
                throw new IllegalArgumentException("the time limit must be positive, got " + deadline);
            }
            this.deadline = deadline;
            return this;
        }

        /**
         * Largest message sent or received, at least 64 KiB (default 64 MiB). Images whose PNG is
         * larger than half of it (or of the server's limit) are uploaded in chunks.
         */
        public Builder maxMessageBytes(int bytes) {
            if (bytes < (64 << 10)) {
                throw new IllegalArgumentException("the message size limit must be at least 64 KiB, got " + bytes);
            }
            this.maxMessageBytes = bytes;
            return this;
        }

        /**
         * Opens the connection (lazily: nothing is sent until the first call).
         *
         * @throws IllegalArgumentException if a trust certificate is given without TLS, or cannot be read
         */
        public RoisegClient build() {
            if (bearerToken != null && !tls && !target.loopback()) {
                System.getLogger(RoisegClient.class.getName()).log(System.Logger.Level.WARNING,
                        "the roiseg access token is sent unencrypted to " + target + ": anyone on the "
                                + "network can read it; run the server with TLS and turn TLS on");
            }
            AddressListNameResolverProvider.register();
            ManagedChannel balanced = channel(balancedServiceConfig());
            return new RoisegClient(this, balanced, target.several() ? channel(pinnedServiceConfig()) : balanced);
        }

        private ManagedChannel channel(Map<String, ?> serviceConfig) {
            NettyChannelBuilder channel = NettyChannelBuilder.forTarget(target.channelTarget())
                    .maxInboundMessageSize(maxMessageBytes)
                    .userAgent("roiseg-java-client")
                    .defaultServiceConfig(serviceConfig)
                    .disableServiceConfigLookUp()
                    .enableRetry();
            if (tls) {
                SslContextBuilder ssl = GrpcSslContexts.forClient();
                if (trustCertificate != null) {
                    if (!trustCertificate.isFile()) {
                        throw new IllegalArgumentException("the certificate file " + trustCertificate
                                + " does not exist");
                    }
                    ssl.trustManager(trustCertificate);
                }
                try {
                    channel.sslContext(ssl.build()).negotiationType(NegotiationType.TLS);
                } catch (SSLException | IllegalArgumentException e) {
                    throw new IllegalArgumentException("the certificate file " + trustCertificate
                            + " could not be read as PEM: " + e.getMessage(), e);
                }
            } else {
                if (trustCertificate != null) {
                    throw new IllegalArgumentException("a trust certificate was given but TLS is off: turn TLS on "
                            + "or remove the certificate");
                }
                channel.usePlaintext();
            }
            if (bearerToken != null) {
                channel.intercept(new BearerTokenInterceptor(bearerToken));
            }
            return channel.build();
        }
    }

    /**
     * The balanced channel's service config: round_robin over the servers that report SERVING for
     * the roiseg service, retries on UNAVAILABLE. The same as the Python client's.
     */
    static Map<String, ?> balancedServiceConfig() {
        return Map.of("loadBalancingConfig", List.of(Map.of("round_robin", Map.of())),
                "healthCheckConfig", Map.of("serviceName", SegmentationGrpc.SERVICE_NAME),
                "methodConfig", List.of(retryConfig()));
    }

    /** The pinned channel's: one server at a time (each client its own, at random), retries on UNAVAILABLE. */
    static Map<String, ?> pinnedServiceConfig() {
        return Map.of("loadBalancingConfig", List.of(Map.of("pick_first", Map.of("shuffleAddressList", true))),
                "methodConfig", List.of(retryConfig()));
    }

    private static Map<String, ?> retryConfig() {
        List<Map<String, ?>> names = new ArrayList<>();
        for (String method : RETRIED_METHODS) {
            names.add(Map.of("service", SegmentationGrpc.SERVICE_NAME, "method", method));
        }
        return Map.of("name", names,
                "retryPolicy", Map.of("maxAttempts", 3.0, "initialBackoff", "0.2s", "maxBackoff", "2s",
                        "backoffMultiplier", 2.0, "retryableStatusCodes", List.of("UNAVAILABLE")));
    }
}
