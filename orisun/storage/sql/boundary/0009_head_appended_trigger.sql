-- Fires notify_appended() when a write transaction moves the head (append_events updates the head
-- row once per call, also when every request in it was refused).
CREATE TRIGGER head_appended
    AFTER UPDATE ON head
    FOR EACH ROW
    WHEN (NEW.position <> OLD.position)
    EXECUTE FUNCTION notify_appended();
