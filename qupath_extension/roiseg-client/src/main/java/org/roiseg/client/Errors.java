package org.roiseg.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Locale;
import javax.net.ssl.SSLException;

/** Turns gRPC failures into messages a pathologist can act on. */
final class Errors {

    static final String SETTINGS = "Extensions > roiseg > Server settings";

    private Errors() {
    }

    /**
     * The exception to throw for a failed call.
     *
     * @param error    the call's failure
     * @param target   host:port of the server
     * @param deadline the time limit the call had, or null for none
     */
    static RoisegException fromStatus(StatusRuntimeException error, String target, Duration deadline) {
        Status status = error.getStatus();
        Status.Code code = status.getCode();
        String detail = status.getDescription() == null ? "" : status.getDescription().strip();
        String server = sentence(detail);
        String message;
        switch (code) {
            case CANCELLED:
                return new RoisegCancelledException(error);
            case UNAVAILABLE:
                SSLException tls = find(error, SSLException.class);
                if (tls != null) {
                    message = "The roiseg server at " + target + " could not be reached securely ("
                            + clean(tls.getMessage()) + "). Check the TLS setting and the certificate in "
                            + SETTINGS + ".";
                } else {
                    message = "The roiseg server at " + target + " is not reachable. Is it running? Check "
                            + SETTINGS + ".";
                }
                break;
            case NOT_FOUND:
            case INVALID_ARGUMENT:
            case PERMISSION_DENIED:
            case OUT_OF_RANGE:
            case ALREADY_EXISTS:
            case ABORTED:
                message = orDefault(server, "The server refused the request (" + code + ").");
                break;
            case RESOURCE_EXHAUSTED:
                message = "The region is too large for the server: "
                        + orDefault(server, "it is above the server's limits.");
                break;
            case FAILED_PRECONDITION:
                message = "This QuPath extension and the roiseg server speak different versions of the "
                        + "roiseg contract: " + orDefault(server, "update the older of the two.");
                break;
            case DEADLINE_EXCEEDED:
                message = "The server took longer than " + seconds(deadline) + " to answer. Draw a smaller "
                        + "region, or allow more time in " + SETTINGS + ".";
                break;
            case UNAUTHENTICATED:
                message = "The roiseg server at " + target + " refused the access token. Check the token in "
                        + SETTINGS + (server.isEmpty() ? "." : " (server: " + server + ")");
                break;
            case UNIMPLEMENTED:
                message = "The server at " + target + " does not answer this roiseg call: it is another kind "
                        + "of server, or an older roiseg server that needs updating.";
                break;
            default:
                message = "The roiseg server failed: " + orDefault(server, code + ".");
                break;
        }
        return new RoisegException(code, message, error);
    }

    /**
     * The exception to throw for a failed fast-track call (SubmitCorrections, ListExamples,
     * RemoveExample, SetDefaultVersion, RetireVersion, FineTune): their FAILED_PRECONDITION (no
     * {@code --dataset-dir}, retiring the default version) and RESOURCE_EXHAUSTED (a fine-tuning
     * already running, too many annotations) carry the server's own explanation; the rest as
     * {@link #fromStatus}.
     */
    static RoisegException fromFastTrackStatus(StatusRuntimeException error, String target, Duration deadline) {
        Status status = error.getStatus();
        Status.Code code = status.getCode();
        String server = sentence(status.getDescription());
        switch (code) {
            case FAILED_PRECONDITION:
                return new RoisegException(code, orDefault(server, "The roiseg server at " + target
                        + " cannot do this now (" + code + ")."), error);
            case RESOURCE_EXHAUSTED:
                return new RoisegException(code, "The roiseg server is busy or the request is too large: "
                        + orDefault(server, "it is above the server's limits."), error);
            case UNIMPLEMENTED:
                return new RoisegException(code, "The server at " + target + " does not answer this roiseg call: "
                        + "corrections and fine-tuning need a roiseg server of contract 1.1 or later.", error);
            default:
                return fromStatus(error, target, deadline);
        }
    }

    /** The first cause of type {@code type} in the chain of {@code error}, or null. */
    private static <T extends Throwable> T find(Throwable error, Class<T> type) {
        for (Throwable t = error; t != null; t = t.getCause() == t ? null : t.getCause()) {
            if (type.isInstance(t)) {
                return type.cast(t);
            }
        }
        return null;
    }

    private static String seconds(Duration deadline) {
        if (deadline == null) {
            return "the time allowed";
        }
        double s = deadline.toMillis() / 1000.0;
        return (s == Math.rint(s) ? String.format(Locale.ROOT, "%.0f", s)
                : String.format(Locale.ROOT, "%.1f", s)) + " s";
    }

    private static String orDefault(String text, String fallback) {
        return text.isEmpty() ? fallback : text;
    }

    private static String clean(String text) {
        return text == null ? "TLS handshake failed" : text.strip();
    }

    /** The server's message with a capital first letter and a closing full stop. */
    static String sentence(String text) {
        if (text == null || text.isBlank()) {
            return "";
        }
        String s = text.strip();
        s = Character.toUpperCase(s.charAt(0)) + s.substring(1);
        char last = s.charAt(s.length() - 1);
        return last == '.' || last == '!' || last == '?' ? s : s + ".";
    }
}
