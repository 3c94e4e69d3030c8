package qupath.ext.roiseg;

import java.io.File;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.roiseg.client.RoisegClient;
import org.roiseg.client.ServerTarget;

/**
 * How to reach the roiseg server, as set in Extensions &gt; roiseg &gt; Server settings. Plain Java,
 * no QuPath classes: {@link #clientBuilder()} maps it to a {@link RoisegClient.Builder}.
 *
 * @param host              host name or IP address; or several servers, balanced:
 *                          {@code host1:port1,host2:port2} or {@code dns:///name:port} (see {@link ServerTarget})
 * @param port              port, 1..65535, of the servers written without one
 * @param tls               whether to connect with TLS
 * @param trustCertificate  PEM certificate (or CA) to trust with TLS; blank: the JDK's authorities
 * @param bearerToken       access token sent as {@code authorization: Bearer}; blank: none
 * @param timeoutMinutes    time limit of one segmentation, in minutes (1..1440)
 * @param serverReadsSlide  whether the server reads local slide files itself (needs its --slide-root)
 * @param localPathPrefix   start of local slide paths to replace for the server; blank: none
 * @param serverPathPrefix  what replaces {@code localPathPrefix} on the server
 */
public record ServerSettings(String host, int port, boolean tls, String trustCertificate, String bearerToken,
                             int timeoutMinutes, boolean serverReadsSlide, String localPathPrefix,
                             String serverPathPrefix) {

    /** Default host: the server on this computer. */
    public static final String DEFAULT_HOST = "127.0.0.1";
    /** Default time limit of a segmentation, in minutes. */
    public static final int DEFAULT_TIMEOUT_MINUTES = 10;
    /** Longest time limit accepted, in minutes (a day). */
    public static final int MAX_TIMEOUT_MINUTES = 24 * 60;

    /** Replaces null strings by empty ones and strips them. */
    public ServerSettings {
        host = strip(host);
        trustCertificate = strip(trustCertificate);
        bearerToken = strip(bearerToken);
        localPathPrefix = strip(localPathPrefix);
        serverPathPrefix = strip(serverPathPrefix);
    }

    /** The server on this computer at the default port, plaintext, no token. */
    public static ServerSettings defaults() {
        return new ServerSettings(DEFAULT_HOST, RoisegClient.DEFAULT_PORT, false, "", "", DEFAULT_TIMEOUT_MINUTES,
                false, "", "");
    }

    /** The server's address as host:port (or the servers' target, every port written out), for messages. */
    public String target() {
        try {
            return serverTarget().toString();
        } catch (IllegalArgumentException e) {
            return host + ":" + port;
        }
    }

    /**
     * The server or servers to connect to.
     *
     * @throws IllegalArgumentException with a message for the user when the host or port is malformed
     */
    public ServerTarget serverTarget() {
        return ServerTarget.parse(host, port);
    }

    /** Whether an access token is set. */
    public boolean hasToken() {
        return !bearerToken.isEmpty();
    }

    /**
     * What is wrong with these settings, as messages for the user; empty when they can be used.
     * A token without TLS is allowed (a server on the same computer) but reported by
     * {@link #warnings()}.
     */
    public List<String> problems() {
        List<String> problems = new ArrayList<>();
        if (port < 1 || port > 65535) {
            problems.add("The port must be between 1 and 65535 (roiseg's default is "
                    + RoisegClient.DEFAULT_PORT + ").");
        } else if (host.isEmpty()) {
            problems.add("Enter the server's host name or IP address (127.0.0.1 for this computer).");
        } else {
            try {
                serverTarget();
            } catch (IllegalArgumentException e) {
                problems.add(e.getMessage());
            }
        }
        if (!trustCertificate.isEmpty()) {
            if (!tls) {
                problems.add("A certificate is set but TLS is off: turn TLS on, or clear the certificate.");
            } else if (!new File(trustCertificate).isFile()) {
                problems.add("The certificate file " + trustCertificate + " does not exist.");
            }
        }
        if (!bearerToken.chars().allMatch(c -> c > 0x20 && c < 0x7F)) {
            problems.add("The access token may only hold printable ASCII characters without spaces.");
        }
        if (timeoutMinutes < 1 || timeoutMinutes > MAX_TIMEOUT_MINUTES) {
            problems.add("The time limit must be between 1 and " + MAX_TIMEOUT_MINUTES + " minutes.");
        }
        if (serverReadsSlide && !serverPathPrefix.isEmpty() && localPathPrefix.isEmpty()) {
            problems.add("A server path prefix is set without the local prefix it replaces.");
        }
        return problems;
    }

    /** Advice that does not prevent using the settings. */
    public List<String> warnings() {
        List<String> warnings = new ArrayList<>();
        if (hasToken() && !tls && !isLoopback()) {
            warnings.add("The access token is sent unencrypted to " + target() + ": turn TLS on.");
        }
        return warnings;
    }

    /** Whether the host (every host) is this computer. */
    public boolean isLoopback() {
        try {
            return serverTarget().loopback();
        } catch (IllegalArgumentException e) {
            return false;
        }
    }

    /**
     * A client builder with these settings; the connection opens lazily on the first call.
     *
     * @throws IllegalArgumentException with the first of {@link #problems()} when the settings cannot be used
     */
    public RoisegClient.Builder clientBuilder() {
        List<String> problems = problems();
        if (!problems.isEmpty()) {
            throw new IllegalArgumentException(problems.get(0) + " (Extensions > roiseg > Server settings)");
        }
        return RoisegClient.builder()
                .target(serverTarget().toString())
                .tls(tls)
                .trustCertificate(trustCertificate.isEmpty() ? null : new File(trustCertificate))
                .bearerToken(bearerToken.isEmpty() ? null : bearerToken)
                .deadline(Duration.ofMinutes(timeoutMinutes));
    }

    /**
     * Reads a port typed by the user.
     *
     * @throws IllegalArgumentException with a message for the user
     */
    public static int parsePort(String text) {
        try {
            int port = Integer.parseInt(text == null ? "" : text.strip());
            if (port >= 1 && port <= 65535) {
                return port;
            }
        } catch (NumberFormatException e) {
            // fall through
        }
        throw new IllegalArgumentException("The port must be a whole number between 1 and 65535, not \""
                + (text == null ? "" : text.strip()) + "\".");
    }

    /** These settings with another host and port (e.g. from a "host:port" text). */
    public ServerSettings withAddress(String newHost, int newPort) {
        return new ServerSettings(newHost, newPort, tls, trustCertificate, bearerToken, timeoutMinutes,
                serverReadsSlide, localPathPrefix, serverPathPrefix);
    }

    /** For logs: the token is never shown. */
    @Override
    public String toString() {
        return "ServerSettings[" + target() + (tls ? ", TLS" : ", plaintext")
                + (trustCertificate.isEmpty() ? "" : ", trust " + trustCertificate)
                + (hasToken() ? ", token set" : "") + ", " + timeoutMinutes + " min"
                + (serverReadsSlide ? ", server reads slides" : "") + "]";
    }

    private static String strip(String s) {
        return s == null ? "" : s.strip();
    }
}
