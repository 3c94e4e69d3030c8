package org.roiseg.client;

import io.grpc.Status;

/** The call was cancelled through its {@link CancellationHandle} or by interrupting its thread. */
public class RoisegCancelledException extends RoisegException {

    private static final long serialVersionUID = 1L;

    /** A cancellation with the standard message. */
    public RoisegCancelledException() {
        this(null);
    }

    /** A cancellation caused by {@code cause} (e.g. an interrupt); may be null. */
    public RoisegCancelledException(Throwable cause) {
        super(Status.Code.CANCELLED, "The segmentation was cancelled.", cause);
    }
}
