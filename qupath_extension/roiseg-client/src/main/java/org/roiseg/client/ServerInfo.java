package org.roiseg.client;

/**
 * What a roiseg server says about itself.
 *
 * @param serverVersion     roiseg package version of the server, e.g. "0.1.0"
 * @param contractMajor     major version of the contract the server speaks
 * @param contractMinor     minor version of the contract the server speaks
 * @param device            where the models run, e.g. "cpu" or "cuda:0 (NVIDIA H100)"
 * @param defaultModelId    the model used when a request names none
 * @param maxMessageBytes   largest single message the server accepts
 * @param maxUploadBytes    largest image the server accepts as an upload
 * @param maxRoiPixels      largest ROI bounding box the server segments, in pixels at model resolution
 * @param slidePathsAllowed whether the server reads slide files itself (see
 *                          {@link RoisegClient#segmentSlide})
 * @param examplesEnabled   whether the server stores corrections and fine-tunes (contract 1.1,
 *                          {@code roiseg serve --dataset-dir}); false from older servers
 */
public record ServerInfo(String serverVersion, int contractMajor, int contractMinor, String device,
                         String defaultModelId, long maxMessageBytes, long maxUploadBytes, long maxRoiPixels,
                         boolean slidePathsAllowed, boolean examplesEnabled) {

    /** A server without the fast track (contract 1.0). */
    public ServerInfo(String serverVersion, int contractMajor, int contractMinor, String device,
                      String defaultModelId, long maxMessageBytes, long maxUploadBytes, long maxRoiPixels,
                      boolean slidePathsAllowed) {
        this(serverVersion, contractMajor, contractMinor, device, defaultModelId, maxMessageBytes, maxUploadBytes,
                maxRoiPixels, slidePathsAllowed, false);
    }

    static ServerInfo fromProto(org.roiseg.proto.v1.ServerInfo info) {
        return new ServerInfo(info.getServerVersion(), info.getContractMajor(), info.getContractMinor(),
                info.getDevice(), info.getDefaultModelId(), info.getMaxMessageBytes(), info.getMaxUploadBytes(),
                info.getMaxRoiPixels(), info.getSlidePathsAllowed(), info.getExamplesEnabled());
    }

    /** The contract version as "major.minor". */
    public String contractVersion() {
        return contractMajor + "." + contractMinor;
    }
}
