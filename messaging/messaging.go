// Package messaging owns outbound messages: template rendering, the Redis
// queue, the worker pool that delivers messages through a Sender, and
// retries.
package messaging
