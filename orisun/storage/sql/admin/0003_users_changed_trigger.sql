-- Fires notify_users_changed() for every update or delete of a user (inserts need no invalidation:
-- a user that did not exist has nothing cached).
CREATE TRIGGER users_changed
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_users_changed();
