package org.roiseg.client;

import io.grpc.Status;

/**
 * A call to the roiseg server that failed or was refused. {@link #getUserMessage()} says what
 * happened and what to do, in words for the person using QuPath.
 */
public class RoisegException extends RuntimeException {

    private static final long serialVersionUID = 1L;

    private final transient Status.Code statusCode;
    private final String userMessage;

    /**
     * @param statusCode  the gRPC status of the failure
     * @param userMessage the message for the user
     * @param cause       the underlying error, or null
     */
    public RoisegException(Status.Code statusCode, String userMessage, Throwable cause) {
        super(userMessage, cause);
        this.statusCode = statusCode;
        this.userMessage = userMessage;
    }

    /** @see #RoisegException(Status.Code, String, Throwable) */
    public RoisegException(Status.Code statusCode, String userMessage) {
        this(statusCode, userMessage, null);
    }

    /** What went wrong and what to do about it, for a pathologist. */
    public String getUserMessage() {
        return userMessage;
    }

    /** The gRPC status code of the failure (e.g. UNAVAILABLE, NOT_FOUND). */
    public Status.Code getStatusCode() {
        return statusCode;
    }
}
