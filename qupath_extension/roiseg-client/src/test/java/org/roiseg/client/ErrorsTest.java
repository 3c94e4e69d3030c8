package org.roiseg.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import javax.net.ssl.SSLHandshakeException;
import org.junit.jupiter.api.Test;

class ErrorsTest {

    static final String TARGET = "10.1.2.3:50051";

    static RoisegException map(Status status) {
        return Errors.fromStatus(new StatusRuntimeException(status), TARGET, Duration.ofSeconds(90));
    }

    @Test
    void unavailableSaysTheServerIsNotReachable() {
        RoisegException e = map(Status.UNAVAILABLE.withDescription("io exception"));
        assertEquals(Status.Code.UNAVAILABLE, e.getStatusCode());
        assertEquals("The roiseg server at 10.1.2.3:50051 is not reachable. Is it running? "
                + "Check Extensions > roiseg > Server settings.", e.getUserMessage());
    }

    @Test
    void unavailableForTlsSaysToCheckTheCertificate() {
        RoisegException e = map(Status.UNAVAILABLE.withDescription("io exception")
                .withCause(new SSLHandshakeException("PKIX path building failed")));
        assertTrue(e.getUserMessage().startsWith("The roiseg server at 10.1.2.3:50051 could not be reached securely"),
                e.getUserMessage());
        assertTrue(e.getUserMessage().contains("certificate"), e.getUserMessage());
    }

    @Test
    void notFoundIsTheServersMessage() {
        RoisegException e = map(Status.NOT_FOUND.withDescription(
                "unknown model 'nope'; available: glas-unet-mobilenetv2"));
        assertEquals(Status.Code.NOT_FOUND, e.getStatusCode());
        assertEquals("Unknown model 'nope'; available: glas-unet-mobilenetv2.", e.getUserMessage());
    }

    @Test
    void resourceExhaustedSaysTheRegionIsTooLarge() {
        RoisegException e = map(Status.RESOURCE_EXHAUSTED.withDescription(
                "the ROI is 900 megapixels at 1.0 µm/px; this server segments at most 400 megapixels"));
        assertEquals("The region is too large for the server: The ROI is 900 megapixels at 1.0 µm/px; "
                + "this server segments at most 400 megapixels.", e.getUserMessage());
    }

    @Test
    void invalidArgumentIsTheServersMessage() {
        RoisegException e = map(Status.INVALID_ARGUMENT.withDescription(
                "the pixel size is missing: send the full-resolution pixel size in µm/px"));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatusCode());
        assertEquals("The pixel size is missing: send the full-resolution pixel size in µm/px.", e.getUserMessage());
    }

    @Test
    void failedPreconditionIsAVersionMismatch() {
        RoisegException e = map(Status.FAILED_PRECONDITION.withDescription(
                "the client speaks roiseg contract 1.0, this server 2.0 (roiseg 0.2.0): update the client"));
        assertTrue(e.getUserMessage().startsWith("This QuPath extension and the roiseg server speak different "
                + "versions of the roiseg contract: The client speaks roiseg contract 1.0"), e.getUserMessage());
        assertTrue(e.getUserMessage().endsWith("update the client."));
    }

    @Test
    void deadlineExceededNamesTheTimeLimit() {
        RoisegException e = map(Status.DEADLINE_EXCEEDED);
        assertEquals("The server took longer than 90 s to answer. Draw a smaller region, or allow more time in "
                + "Extensions > roiseg > Server settings.", e.getUserMessage());
        assertTrue(Errors.fromStatus(new StatusRuntimeException(Status.DEADLINE_EXCEEDED), TARGET,
                Duration.ofMillis(1500)).getUserMessage().contains("1.5 s"));
    }

    @Test
    void unauthenticatedHintsAtTheToken() {
        RoisegException e = map(Status.UNAUTHENTICATED.withDescription("missing bearer token"));
        assertEquals(Status.Code.UNAUTHENTICATED, e.getStatusCode());
        assertTrue(e.getUserMessage().contains("refused the access token"), e.getUserMessage());
        assertTrue(e.getUserMessage().contains("Check the token in Extensions > roiseg > Server settings"));
        assertTrue(e.getUserMessage().contains("Missing bearer token"));
    }

    @Test
    void cancelledBecomesRoisegCancelledException() {
        RoisegException e = map(Status.CANCELLED);
        assertInstanceOf(RoisegCancelledException.class, e);
        assertEquals("The segmentation was cancelled.", e.getUserMessage());
    }

    @Test
    void otherCodesSayTheServerFailed() {
        assertEquals("The roiseg server failed: The server failed while segmenting; its log has the details.",
                map(Status.INTERNAL.withDescription("the server failed while segmenting; its log has the details"))
                        .getUserMessage());
        assertEquals("The roiseg server failed: UNKNOWN.", map(Status.UNKNOWN).getUserMessage());
        assertTrue(map(Status.UNIMPLEMENTED).getUserMessage().contains("does not answer this roiseg call"));
        assertEquals("Slide file /x is outside the allowed directories.",
                map(Status.PERMISSION_DENIED.withDescription("slide file /x is outside the allowed directories"))
                        .getUserMessage());
    }

    @Test
    void everyCodeGivesANonEmptyMessageAndKeepsTheCause() {
        for (Status.Code code : Status.Code.values()) {
            if (code == Status.Code.OK) {
                continue;
            }
            StatusRuntimeException cause = new StatusRuntimeException(code.toStatus());
            RoisegException e = Errors.fromStatus(cause, TARGET, null);
            assertEquals(code, e.getStatusCode());
            assertTrue(!e.getUserMessage().isBlank() && e.getUserMessage().endsWith("."), code + ": " + e.getUserMessage());
            assertEquals(cause, e.getCause());
        }
    }

    static RoisegException mapFastTrack(Status status) {
        return Errors.fromFastTrackStatus(new StatusRuntimeException(status), TARGET, Duration.ofSeconds(90));
    }

    @Test
    void fastTrackRefusalsAreTheServersOwnExplanation() {
        RoisegException off = mapFastTrack(Status.FAILED_PRECONDITION.withDescription(
                "this server keeps no examples: start it with roiseg serve --dataset-dir DIR"));
        assertEquals(Status.Code.FAILED_PRECONDITION, off.getStatusCode());
        assertEquals("This server keeps no examples: start it with roiseg serve --dataset-dir DIR.",
                off.getUserMessage());
        RoisegException busy = mapFastTrack(Status.RESOURCE_EXHAUSTED.withDescription(
                "a fine-tuning is already running"));
        assertTrue(busy.getUserMessage().endsWith("A fine-tuning is already running."), busy.getUserMessage());
        assertTrue(mapFastTrack(Status.UNIMPLEMENTED).getUserMessage().contains("contract 1.1"));
        // the rest as every call's
        assertEquals(map(Status.NOT_FOUND.withDescription("no example 'x'")).getUserMessage(),
                mapFastTrack(Status.NOT_FOUND.withDescription("no example 'x'")).getUserMessage());
        assertInstanceOf(RoisegCancelledException.class, mapFastTrack(Status.CANCELLED));
    }
}
