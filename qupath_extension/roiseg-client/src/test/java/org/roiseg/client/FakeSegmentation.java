package org.roiseg.client;

import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.function.BiConsumer;
import org.roiseg.proto.v1.ClassArea;
import org.roiseg.proto.v1.ClassInfo;
import org.roiseg.proto.v1.Color;
import org.roiseg.proto.v1.Execution;
import org.roiseg.proto.v1.GeoJsonChunk;
import org.roiseg.proto.v1.GetServerInfoRequest;
import org.roiseg.proto.v1.ListModelsRequest;
import org.roiseg.proto.v1.ListModelsResponse;
import org.roiseg.proto.v1.ModelInfo;
import org.roiseg.proto.v1.ModelResult;
import org.roiseg.proto.v1.Progress;
import org.roiseg.proto.v1.Rect;
import org.roiseg.proto.v1.SegmentEvent;
import org.roiseg.proto.v1.SegmentRequest;
import org.roiseg.proto.v1.SegmentationGrpc;
import org.roiseg.proto.v1.ServerInfo;
import org.roiseg.proto.v1.Stage;
import org.roiseg.proto.v1.Timings;
import org.roiseg.proto.v1.UploadImageRequest;
import org.roiseg.proto.v1.UploadImageResponse;

/** A scriptable stand-in for the Python service. */
class FakeSegmentation extends SegmentationGrpc.SegmentationImplBase {

    volatile ServerInfo info = ServerInfo.newBuilder().setServerVersion("0.1.0").setContractMajor(1)
            .setContractMinor(0).setDevice("cpu").setDefaultModelId("m1").setMaxMessageBytes(64 << 20)
            .setMaxUploadBytes(1L << 30).setMaxRoiPixels(400_000_000L).setSlidePathsAllowed(true).build();
    volatile BiConsumer<SegmentRequest, StreamObserver<SegmentEvent>> segment = (r, out) -> {
        sendResult(out, "m1", GeoJsonFeaturesTest.COLLECTION, 2, 7);
        out.onCompleted();
    };
    final List<SegmentRequest> segmentRequests = new CopyOnWriteArrayList<>();
    final List<Integer> uploadChunkSizes = new CopyOnWriteArrayList<>();
    volatile long uploadAnnounced = -1;
    volatile byte[] uploaded;

    static ModelInfo model(String id) {
        return ModelInfo.newBuilder().setId(id).setName("Model " + id).setDescription("glands").setVersion("0.1.0")
                .setCheckpointSha256("ab".repeat(32)).setArchitecture("Unet").setEncoder("mobilenet_v2").setMpp(1.0)
                .setTileSize(256).setOverlap(32)
                .addClasses(ClassInfo.newBuilder().setIndex(0).setName("Stroma")
                        .setColor(Color.newBuilder().setR(150).setG(200).setB(150)).setCatchAll(true))
                .addClasses(ClassInfo.newBuilder().setIndex(1).setName("Gland epithelium")
                        .setColor(Color.newBuilder().setR(200).setG(40).setB(40)))
                .setTrainedOn("GlaS").putMetrics("dice", "0.8").build();
    }

    @Override
    public void getServerInfo(GetServerInfoRequest request, StreamObserver<ServerInfo> out) {
        out.onNext(info);
        out.onCompleted();
    }

    @Override
    public void listModels(ListModelsRequest request, StreamObserver<ListModelsResponse> out) {
        out.onNext(ListModelsResponse.newBuilder().addModels(model("m1")).addModels(model("m2"))
                .setDefaultModelId("m1").build());
        out.onCompleted();
    }

    @Override
    public StreamObserver<UploadImageRequest> uploadImage(StreamObserver<UploadImageResponse> out) {
        ByteArrayOutputStream data = new ByteArrayOutputStream();
        return new StreamObserver<>() {
            @Override
            public void onNext(UploadImageRequest part) {
                if (part.hasHeader()) {
                    uploadAnnounced = part.getHeader().getTotalBytes();
                } else {
                    uploadChunkSizes.add(part.getChunk().size());
                    data.writeBytes(part.getChunk().toByteArray());
                }
            }

            @Override
            public void onError(Throwable t) {
            }

            @Override
            public void onCompleted() {
                uploaded = data.toByteArray();
                out.onNext(UploadImageResponse.newBuilder().setUploadId("upload-1").setReceivedBytes(uploaded.length)
                        .setExpiresInSeconds(600).build());
                out.onCompleted();
            }
        };
    }

    @Override
    public void segment(SegmentRequest request, StreamObserver<SegmentEvent> out) {
        segmentRequests.add(request);
        segment.accept(request, out);
    }

    static SegmentEvent progress(Stage stage, String model, int done, int total) {
        return SegmentEvent.newBuilder().setProgress(Progress.newBuilder().setStage(stage).setModelId(model)
                .setTilesDone(done).setTilesTotal(total).setMessage(stage.name())).build();
    }

    /** Progress, the GeoJSON in chunks of {@code chunkBytes}, then the ModelResult. */
    static void sendResult(StreamObserver<SegmentEvent> out, String model, String geojson, int featureCount,
                           int chunkBytes) {
        out.onNext(progress(Stage.STAGE_READING, model, 0, 0));
        out.onNext(progress(Stage.STAGE_INFERENCE, model, 1, 2));
        out.onNext(progress(Stage.STAGE_INFERENCE, model, 2, 2));
        byte[] text = geojson.getBytes(StandardCharsets.UTF_8);
        List<SegmentEvent> chunks = new ArrayList<>();
        for (int start = 0; start < text.length; start += chunkBytes) {
            chunks.add(SegmentEvent.newBuilder().setGeojsonChunk(GeoJsonChunk.newBuilder().setModelId(model)
                    .setData(ByteString.copyFrom(text, start, Math.min(chunkBytes, text.length - start)))).build());
        }
        chunks.forEach(out::onNext);
        out.onNext(SegmentEvent.newBuilder().setModelResult(ModelResult.newBuilder().setModelId(model)
                .setModelVersion("0.1.0").setCheckpointSha256("ab".repeat(32)).setFeatureCount(featureCount)
                .addClassAreas(ClassArea.newBuilder().setName("Gland epithelium").setAreaUm2(96).setFeatures(1))
                .setExecution(Execution.newBuilder().setMppUsed(1.0).setSourceMpp(0.5).setLevel(-1)
                        .setLevelDownsample(2).setRegion(Rect.newBuilder().setX(10).setY(20).setWidth(30)
                                .setHeight(40)).setRasterWidth(15).setRasterHeight(20).setTiles(2).setDevice("cpu")
                        .setTimings(Timings.newBuilder().setInferenceS(1.5).setTotalS(2.5)))).build());
    }

    static void fail(StreamObserver<?> out, Status status) {
        out.onError(status.asRuntimeException());
    }
}
