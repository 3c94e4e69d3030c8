package org.roiseg.client;

/**
 * Receives the progress of one fine-tuning, on the thread that called the client. An exception
 * thrown here cancels the fine-tuning and reaches the caller.
 */
@FunctionalInterface
public interface FineTuneListener {

    /** A listener that ignores every event. */
    FineTuneListener NONE = progress -> { };

    /** One progress event. */
    void onProgress(FineTuneProgress progress);
}
